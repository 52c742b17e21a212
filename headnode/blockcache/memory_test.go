package blockcache

import (
	"errors"
	"runtime"
	"testing"
)

func TestDefaultCapacity(t *testing.T) {
	for _, tc := range []struct {
		total uint64
		want  int64
	}{
		{0, 64 << 20},
		{1 << 30, 64 << 20},
		{2 << 30, 64 << 20},
		{4 << 30, 128 << 20},
		{64 << 30, 2 << 30},
		{128 << 30, 4 << 30},
		{1 << 40, 4 << 30},
		{(8 << 30) + 12345*32, 256<<20 + 12288},
	} {
		if got := DefaultCapacity(tc.total); got != tc.want {
			t.Errorf("DefaultCapacity(%d) = %d, want %d", tc.total, got, tc.want)
		}
	}
}

func TestParseMemTotal(t *testing.T) {
	good := "MemFree:         1000 kB\nMemTotal:       16310412 kB\nMemAvailable: 5 kB\n"
	if got, err := parseMemTotal([]byte(good)); err != nil || got != 16310412*1024 {
		t.Fatalf("parseMemTotal = %d, %v", got, err)
	}
	for _, bad := range []string{
		"",
		"MemFree: 1000 kB\n",
		"MemTotal: 16310412\n",
		"MemTotal: 16310412 MB\n",
		"MemTotal: x kB\n",
		"MemTotal: 0 kB\n",
		"MemTotal: -5 kB\n",
	} {
		if got, err := parseMemTotal([]byte(bad)); !errors.Is(err, ErrMemoryUnknown) {
			t.Errorf("parseMemTotal(%q) = %d, %v; want ErrMemoryUnknown", bad, got, err)
		}
	}
}

func TestMemoryTotal(t *testing.T) {
	got, err := MemoryTotal()
	if runtime.GOOS != "linux" {
		if !errors.Is(err, ErrMemoryUnknown) {
			t.Fatalf("MemoryTotal on %s = %d, %v", runtime.GOOS, got, err)
		}
		return
	}
	if err != nil || got < 64<<20 {
		t.Fatalf("MemoryTotal = %d, %v", got, err)
	}
}
