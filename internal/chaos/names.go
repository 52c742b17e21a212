package chaos

import "fmt"

// Kinds, outcomes and contents are written by name in a history file, so
// that a failed run's history reads without a decoder ring.

func (k Kind) MarshalText() ([]byte, error) { return marshalName(k.String(), "kind", int(k)) }

func (k *Kind) UnmarshalText(b []byte) error {
	return unmarshalName(b, "kind", []Kind{Write, Read, Trim, Flush}, k)
}

func (o Outcome) MarshalText() ([]byte, error) { return marshalName(o.String(), "outcome", int(o)) }

func (o *Outcome) UnmarshalText(b []byte) error {
	return unmarshalName(b, "outcome", []Outcome{OK, Failed, Pending}, o)
}

func (c Content) MarshalText() ([]byte, error) { return marshalName(c.String(), "content", int(c)) }

func (c *Content) UnmarshalText(b []byte) error {
	return unmarshalName(b, "content", []Content{Zero, Valid, Corrupt}, c)
}

func marshalName(name, what string, v int) ([]byte, error) {
	if name == what+"?" {
		return nil, fmt.Errorf("chaos: no %s %d", what, v)
	}
	return []byte(name), nil
}

func unmarshalName[T fmt.Stringer](b []byte, what string, all []T, into *T) error {
	for _, v := range all {
		if v.String() == string(b) {
			*into = v
			return nil
		}
	}
	return fmt.Errorf("chaos: unknown %s %q", what, b)
}
