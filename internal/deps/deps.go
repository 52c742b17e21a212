//go:build tools

package deps

import (
	_ "github.com/cockroachdb/datadriven"
	_ "github.com/cockroachdb/pebble"
	_ "github.com/hashicorp/go-msgpack/v2/codec"
	_ "github.com/hashicorp/raft"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
)
