package logstore

import (
	"cmp"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/hashicorp/raft"
)

// TestDataDriven runs the scripts in testdata/datadriven against a Store on a real
// temporary directory. The language:
//
//	open | reopen | close                 open, close and open again, or close the store
//	store group=G                         StoreLogs of the entries in the input, one a line:
//	  <index> [term=T] [type=LogCommand] [data=S|data=nil] [ext=S] [at=<unix seconds>[.<nanos>]]
//	                                      (term defaults to 1, type to LogCommand, data and ext to nil)
//	get group=G index=I                   GetLog
//	bounds group=G                        FirstIndex and LastIndex
//	log group=G                           bounds, then every entry from first to last ("-" for a gap)
//	delete-range group=G min=A max=B      DeleteRange
//	set group=G key=K val=V               Set ("val=" sets an empty value)
//	get-stable group=G key=K              Get
//	set-uint64 group=G key=K val=N        SetUint64
//	get-uint64 group=G key=K              GetUint64
//	delete-group group=G                  DeleteGroup
//	groups                                Groups
//
// Every command prints its result or its error.
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, filepath.Join("testdata", "datadriven"), func(t *testing.T, path string) {
		dir := t.TempDir()
		var s *Store
		t.Cleanup(func() {
			if s != nil {
				_ = s.Close()
			}
		})
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			group := func() *Group {
				var id uint64
				d.ScanArgs(t, "group", &id)
				return s.Group(id)
			}
			u64 := func(key string) uint64 {
				var v uint64
				d.ScanArgs(t, key, &v)
				return v
			}
			str := func(key string) string {
				var v string
				d.ScanArgs(t, key, &v)
				return v
			}
			switch d.Cmd {
			case "close":
				return result(s.Close())
			case "open", "reopen":
				if d.Cmd == "reopen" {
					if err := s.Close(); err != nil {
						return "error: " + formatErr(err)
					}
				}
				var err error
				if s, err = OpenWithOptions(dir, Options{Logger: quietLogger{}}); err != nil {
					return "error: " + formatErr(err)
				}
				return "ok"
			case "store":
				var logs []*raft.Log
				for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
					l, err := parseLogLine(line)
					if err != nil {
						d.Fatalf(t, "%v", err)
					}
					logs = append(logs, l)
				}
				return result(group().StoreLogs(logs))
			case "get":
				var l raft.Log
				if err := group().GetLog(u64("index"), &l); err != nil {
					return "error: " + formatErr(err)
				}
				return formatLog(&l)
			case "bounds":
				return formatBounds(group())
			case "log":
				g := group()
				var b strings.Builder
				b.WriteString(formatBounds(g))
				first, _ := g.FirstIndex()
				last, _ := g.LastIndex()
				for i := first; i != 0 && i <= last; i++ {
					var l raft.Log
					switch err := g.GetLog(i, &l); err {
					case nil:
						fmt.Fprintf(&b, "\n%s", formatLog(&l))
					case raft.ErrLogNotFound:
						fmt.Fprintf(&b, "\n%d -", i)
					default:
						fmt.Fprintf(&b, "\n%d error: %s", i, formatErr(err))
					}
				}
				return b.String()
			case "delete-range":
				return result(group().DeleteRange(u64("min"), u64("max")))
			case "set":
				return result(group().Set([]byte(str("key")), []byte(str("val"))))
			case "get-stable":
				v, err := group().Get([]byte(str("key")))
				if err != nil {
					return "error: " + formatErr(err)
				}
				return fmt.Sprintf("%q", v)
			case "set-uint64":
				return result(group().SetUint64([]byte(str("key")), u64("val")))
			case "get-uint64":
				v, err := group().GetUint64([]byte(str("key")))
				if err != nil {
					return fmt.Sprintf("%d error: %s", v, formatErr(err))
				}
				return strconv.FormatUint(v, 10)
			case "delete-group":
				var id uint64
				d.ScanArgs(t, "group", &id)
				return result(s.DeleteGroup(id))
			case "groups":
				ids, err := s.Groups()
				if err != nil {
					return "error: " + formatErr(err)
				}
				return fmt.Sprint(ids)
			default:
				d.Fatalf(t, "unknown command %q", d.Cmd)
				return ""
			}
		})
	})
}

func result(err error) string {
	if err != nil {
		return "error: " + formatErr(err)
	}
	return "ok"
}

// formatErr prints an error with the classes a caller can test for.
func formatErr(err error) string {
	s := err.Error()
	switch {
	case err == raft.ErrLogNotFound:
		s += " [raft.ErrLogNotFound]"
	case err == ErrKeyNotFound:
		s += " [ErrKeyNotFound]"
	case errors.Is(err, ErrCorrupt):
		s += " [ErrCorrupt]"
	case errors.Is(err, ErrClosed):
		s += " [ErrClosed]"
	}
	return s
}

func formatBounds(g *Group) string {
	first, err1 := g.FirstIndex()
	last, err2 := g.LastIndex()
	if err := cmp.Or(err1, err2); err != nil {
		return "error: " + formatErr(err)
	}
	return fmt.Sprintf("first=%d last=%d", first, last)
}

func formatLog(l *raft.Log) string {
	q := func(b []byte) string {
		if b == nil {
			return "nil"
		}
		return strconv.Quote(string(b))
	}
	s := fmt.Sprintf("%d term=%d type=%s data=%s ext=%s", l.Index, l.Term, l.Type, q(l.Data), q(l.Extensions))
	if !l.AppendedAt.IsZero() {
		s += " at=" + l.AppendedAt.Format(time.RFC3339Nano)
	}
	return s
}

func parseLogLine(line string) (*raft.Log, error) {
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return nil, fmt.Errorf("empty entry line")
	}
	index, err := strconv.ParseUint(fields[0], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("entry %q: index: %v", line, err)
	}
	l := &raft.Log{Index: index, Term: 1, Type: raft.LogCommand}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "term":
			if l.Term, err = strconv.ParseUint(v, 10, 64); err != nil {
				return nil, fmt.Errorf("entry %q: %v", line, err)
			}
		case "type":
			found := false
			for t := raft.LogType(0); t < 16; t++ {
				if t.String() == v {
					l.Type, found = t, true
				}
			}
			if !found {
				return nil, fmt.Errorf("entry %q: unknown type %q", line, v)
			}
		case "data", "ext":
			var b []byte
			if v != "nil" {
				b = []byte(v)
			}
			if k == "data" {
				l.Data = b
			} else {
				l.Extensions = b
			}
		case "at":
			secs, nanos, _ := strings.Cut(v, ".")
			sec, err1 := strconv.ParseInt(secs, 10, 64)
			nsec, err2 := int64(0), error(nil)
			if nanos != "" {
				nsec, err2 = strconv.ParseInt(nanos, 10, 64)
			}
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("entry %q: bad at", line)
			}
			l.AppendedAt = time.Unix(sec, nsec)
		default:
			return nil, fmt.Errorf("entry %q: unknown field %q", line, k)
		}
	}
	return l, nil
}
