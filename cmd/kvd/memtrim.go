package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Go keeps freed heap memory mapped, returning it to the OS only slowly
// (its scavenger aims at the heap goal of the last cycle). A node's heap
// swings by tens of MiB as Badger allocates and drops memtable arenas and
// table builders, so after a burst of writes 40-60 MiB of free heap stayed
// resident for minutes. trimMemory hands such memory back.
const (
	trimEvery   = 10 * time.Second
	trimMinFree = 16 << 20 // below this, not worth a forced GC
)

// trimMemory returns free heap memory to the OS every period while more
// than trimMinFree of it is held, until ctx ends. A forced collection of a
// node's heap takes a few milliseconds of CPU, once per period at most.
func trimMemory(ctx context.Context, period time.Duration, logger *slog.Logger) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return // not on this Go version
		}
		if free := sample[0].Value.Uint64(); free >= trimMinFree {
			debug.FreeOSMemory()
			logger.Debug("returned free heap memory to the OS", "bytes", free)
		}
	}
}
