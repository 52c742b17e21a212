package sled

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the sled's Prometheus series, labelled by sled id (a demo
// runs several sleds in one process).
type metrics struct {
	puts, gets, corrupt, deviceFailures, scrubbedBytes *prometheus.CounterVec
	shards, usedBytes, failedDevices                   *prometheus.GaugeVec
}

var (
	defaultMetricsOnce sync.Once
	defaultMetrics     *metrics
)

// processMetrics returns the metrics registered on the default registry,
// registering them on first use.
func processMetrics() *metrics {
	defaultMetricsOnce.Do(func() {
		defaultMetrics = newMetrics(prometheus.DefaultRegisterer)
	})
	return defaultMetrics
}

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ballast", Subsystem: "sled", Name: name, Help: help}, []string{"sled"})
		if reg != nil {
			reg.MustRegister(c)
		}
		return c
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ballast", Subsystem: "sled", Name: name, Help: help}, []string{"sled"})
		if reg != nil {
			reg.MustRegister(g)
		}
		return g
	}
	return &metrics{
		puts:           counter("shard_puts_total", "Shards written."),
		gets:           counter("shard_gets_total", "Shard reads served."),
		corrupt:        counter("shards_corrupt_total", "Shards that failed their checksum and were quarantined."),
		deviceFailures: counter("device_failures_total", "Devices marked failed."),
		scrubbedBytes:  counter("scrubbed_bytes_total", "Bytes of shard files verified by the scrubber."),
		shards:         gauge("shards", "Shards held."),
		usedBytes:      gauge("used_bytes", "Bytes of shard files held."),
		failedDevices:  gauge("failed_devices", "Devices marked failed."),
	}
}
