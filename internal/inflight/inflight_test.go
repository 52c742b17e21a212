package inflight

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestAcquireWaitsForRoom(t *testing.T) {
	l := New(2, 100)
	ctx := context.Background()
	if err := l.Acquire(ctx, 60); err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		if err := l.Acquire(ctx, 60); err != nil {
			t.Error(err)
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("160 bytes admitted under a bound of 100")
	case <-time.After(50 * time.Millisecond):
	}
	l.Release(60)
	<-got
	s := l.Stats()
	if s.Count != 1 || s.Bytes != 60 || s.PeakBytes != 60 || s.Waits != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestCountBoundAndOversizedAlone(t *testing.T) {
	l := New(1, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Acquire(context.Background(), 50); err != nil { // alone: admitted
		t.Fatal(err)
	}
	if err := l.Acquire(ctx, 0); err == nil {
		t.Fatal("a second request admitted under a count bound of 1")
	}
	l.Release(50)
	if s := l.Stats(); s.Count != 0 || s.Bytes != 0 {
		t.Errorf("stats after release %+v", s)
	}
}

func TestConcurrentNeverOverBound(t *testing.T) {
	l := New(0, 1000)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				n := int64(100 + i*10)
				if err := l.Acquire(context.Background(), n); err != nil {
					t.Error(err)
					return
				}
				l.Release(n)
			}
		}()
	}
	wg.Wait()
	if s := l.Stats(); s.PeakBytes > 1000 || s.Bytes != 0 {
		t.Errorf("stats %+v", s)
	}
}
