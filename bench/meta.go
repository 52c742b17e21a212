package bench

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Metadata says where, when and how a run was made.
type Metadata struct {
	Date        string   `json:"date"`
	CommandLine []string `json:"command_line"`
	Suite       string   `json:"suite"`
	Machine     Machine  `json:"machine"`
	// GitCommit is the commit the ballast binary was built from (with
	// GitModified when the tree had changes), else the repository's HEAD.
	GitCommit   string `json:"git_commit,omitempty"`
	GitModified bool   `json:"git_modified,omitempty"`
	GoVersion   string `json:"go_version,omitempty"`
	FioVersion  string `json:"fio_version,omitempty"`
	QemuVersion string `json:"qemu_nbd_version,omitempty"`
	// DurationS is how long the whole run took.
	DurationS float64 `json:"duration_s"`
}

// Machine describes the machine the run was made on.
type Machine struct {
	CPUModel    string `json:"cpu_model"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   uint64 `json:"memory_mib,omitempty"`
	Kernel      string `json:"kernel"`
	Hostname    string `json:"hostname,omitempty"`
	DataDir     string `json:"data_dir"`
	DataDisk    Disk   `json:"data_disk"`
	Virtualized bool   `json:"virtualized,omitempty"`
}

// Disk is the block device and filesystem holding the data directory.
type Disk struct {
	Device     string `json:"device"`
	Filesystem string `json:"filesystem"`
	MountPoint string `json:"mount_point"`
	Model      string `json:"model,omitempty"`
	Rotational *bool  `json:"rotational,omitempty"`
	SizeBytes  uint64 `json:"size_bytes,omitempty"`
}

func collectMetadata(ctx context.Context, cfg *Config, suite, dataDir string) Metadata {
	m := Metadata{
		Date:        time.Now().UTC().Format(time.RFC3339),
		CommandLine: cfg.CommandLine,
		Suite:       suite,
		Machine: Machine{
			CPUModel: cpuModel(),
			CPUs:     runtime.NumCPU(),
			Kernel:   strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
			DataDir:  dataDir,
			DataDisk: diskOf(dataDir),
		},
	}
	m.Machine.Hostname, _ = os.Hostname()
	m.Machine.MemoryMiB = memTotalMiB()
	m.Machine.Virtualized = strings.Contains(readFile("/proc/cpuinfo"), " hypervisor")
	if cfg.BallastBinary != "" {
		if bi, err := buildinfo.ReadFile(cfg.BallastBinary); err == nil {
			m.GoVersion = bi.GoVersion
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					m.GitCommit = s.Value
				case "vcs.modified":
					m.GitModified = s.Value == "true"
				}
			}
		}
	}
	if m.GitCommit == "" {
		m.GitCommit = commandOutput(ctx, "git", "rev-parse", "HEAD")
	}
	if m.GoVersion == "" {
		m.GoVersion = runtime.Version()
	}
	if !cfg.NoBaselines {
		m.QemuVersion = firstLine(commandOutput(ctx, cfg.QemuNBDBinary, "--version"))
	}
	return m
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

// commandOutput runs a read-only command and returns its trimmed output,
// or "" when it fails.
func commandOutput(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func cpuModel() string {
	for _, line := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotalMiB() uint64 {
	for _, line := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb / 1024
			}
		}
	}
	return 0
}

// diskOf finds the mount holding dir (the longest mount point that
// contains it, from /proc/self/mountinfo) and describes its device from
// /sys/class/block.
func diskOf(dir string) Disk {
	var d Disk
	abs, err := filepath.Abs(dir)
	if err != nil {
		return d
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return d
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 2 {
			continue
		}
		mp := unescapeMount(pf[4])
		if !within(abs, mp) || len(mp) < len(d.MountPoint) {
			continue
		}
		d = Disk{MountPoint: mp, Filesystem: qf[0], Device: qf[1]}
	}
	describeBlockDevice(&d)
	return d
}

func within(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// describeBlockDevice adds the model, size and rotational flag of the
// disk a /dev device is (or is a partition of).
func describeBlockDevice(d *Disk) {
	dev, ok := strings.CutPrefix(d.Device, "/dev/")
	if !ok {
		return
	}
	sys, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", filepath.Base(dev)))
	if err != nil {
		return
	}
	disk := sys
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		disk = filepath.Dir(sys)
	}
	if rot := strings.TrimSpace(readFile(filepath.Join(disk, "queue", "rotational"))); rot != "" {
		r := rot == "1"
		d.Rotational = &r
	}
	d.Model = strings.TrimSpace(readFile(filepath.Join(disk, "device", "model")))
	if d.Model == "" && strings.HasPrefix(filepath.Base(disk), "vd") {
		d.Model = "virtio block device"
	}
	if sectors, err := strconv.ParseUint(strings.TrimSpace(readFile(filepath.Join(disk, "size"))), 10, 64); err == nil {
		d.SizeBytes = sectors * 512
	}
}
