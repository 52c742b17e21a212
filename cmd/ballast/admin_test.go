package main

import (
	"testing"

	"github.com/ballast-storage/ballast/proto/ballastpb"
)

func TestDiskLine(t *testing.T) {
	d := &ballastpb.DiskStatus{FreeBytes: 6 << 20, TotalBytes: 64 << 20, ReserveBytes: 4 << 20, MinFreeBytes: 8 << 20}
	want := "data disk: 6.0 MiB free of 64 MiB (58 MiB used), emergency reserve 4.0 MiB"
	if got := diskLine(d); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	d.WritesRefused = true
	want += "; writes refused: disk full (under 8.0 MiB free)"
	if got := diskLine(d); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
