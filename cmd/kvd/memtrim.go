package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Go keeps freed heap memory mapped, returning it to the OS only slowly
// (its scavenger aims at the heap goal of the last cycle), and collects
// garbage only as the heap grows. A node's heap swings by tens of MiB as
// Badger allocates and drops memtable arenas and table builders, so after a
// burst of writes 40-60 MiB of free heap or uncollected garbage stayed
// resident for minutes on a node gone idle. trimMemory hands it back.
const (
	trimEvery   = 10 * time.Second
	trimMinFree = 16 << 20 // below this, not worth a forced GC
)

// trimMemory collects garbage and returns free heap memory to the OS, every
// period in which trimMinFree or more is free or the heap grew that much
// since the last trim (it may be garbage), until ctx ends. A forced
// collection of a node's heap takes a few milliseconds of CPU, once per
// period at most; an idle node is left alone after one.
func trimMemory(ctx context.Context, period time.Duration, logger *slog.Logger) {
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
	}
	// Objects after the last trim: all live then. Growth past it may be
	// garbage, which only a collection can tell.
	var trimmed uint64
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		for _, s := range sample {
			if s.Value.Kind() != metrics.KindUint64 {
				return // not on this Go version
			}
		}
		free, objects := sample[0].Value.Uint64(), sample[1].Value.Uint64()
		if free < trimMinFree && objects < trimmed+trimMinFree {
			continue
		}
		debug.FreeOSMemory()
		metrics.Read(sample)
		trimmed = sample[1].Value.Uint64()
		logger.Debug("returned free heap memory to the OS", "free", free, "objects_before", objects, "objects_after", trimmed)
	}
}
