package volume

import (
	"errors"
	"fmt"
	"regexp"
	"sort"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

// BlockSizeBytes is the unit of allocation, replication and alignment of
// every volume.
const BlockSizeBytes = 4096

// MaxSizeBytes bounds a volume so that block numbers and byte offsets stay
// far from overflow anywhere in the system.
const MaxSizeBytes = 1 << 50 // 1 PiB

var (
	// ErrExists is returned when creating a volume whose name is taken.
	ErrExists = errors.New("volume: already exists")
	// ErrNotFound is returned for an unknown volume name or id.
	ErrNotFound = errors.New("volume: not found")
	// ErrInvalid is returned for a malformed name or size, or a resize that
	// would shrink the volume.
	ErrInvalid = errors.New("volume: invalid")
	// ErrNoPlacement is returned when the rack has too few head nodes to
	// hold a primary and a secondary.
	ErrNoPlacement = errors.New("volume: not enough head nodes for placement")
	// ErrConflict is returned when a conditional change finds the state it
	// was conditioned on changed.
	ErrConflict = errors.New("volume: conflicting change")
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateName reports whether name may name a volume.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

var sledIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)

// ValidateSledID reports whether id may name a sled.
func ValidateSledID(id string) error {
	if !sledIDPattern.MatchString(id) {
		return fmt.Errorf("%w: sled id %q: use 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, id)
	}
	return nil
}

// ValidateSize reports whether size may be a volume's size.
func ValidateSize(size uint64) error {
	switch {
	case size == 0:
		return fmt.Errorf("%w: size must be greater than zero", ErrInvalid)
	case size%BlockSizeBytes != 0:
		return fmt.Errorf("%w: size %d is not a multiple of %d bytes", ErrInvalid, size, BlockSizeBytes)
	case size > MaxSizeBytes:
		return fmt.Errorf("%w: size %d is over the maximum of %d bytes", ErrInvalid, size, uint64(MaxSizeBytes))
	}
	return nil
}

// Place chooses a primary and one secondary for a new volume among the head
// nodes, spreading primaries first and then secondaries so that load is
// even. It is deterministic for a given state.
func Place(headNodes []string, existing []*ballastpb.Volume) (primary, secondary string, err error) {
	if len(headNodes) < 2 {
		return "", "", fmt.Errorf("%w: have %d, need 2", ErrNoPlacement, len(headNodes))
	}
	primaries := map[string]int{}
	replicas := map[string]int{}
	for _, v := range existing {
		primaries[v.Primary]++
		replicas[v.Primary]++
		for _, s := range v.Secondaries {
			replicas[s]++
		}
	}
	nodes := append([]string(nil), headNodes...)
	sort.Strings(nodes)
	primary = nodes[0]
	for _, n := range nodes[1:] {
		if primaries[n] < primaries[primary] {
			primary = n
		}
	}
	for _, n := range nodes {
		if n == primary {
			continue
		}
		if secondary == "" || replicas[n] < replicas[secondary] {
			secondary = n
		}
	}
	return primary, secondary, nil
}
