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

// trimMemory collects garbage and returns free heap memory to the OS after
// a period without a collection in which trimMinFree or more was free or
// the heap grew that much since the last trim (it may be garbage), until
// ctx ends. A forced collection of a node's heap takes a few milliseconds
// of CPU; an idle node is left alone after one.
func trimMemory(ctx context.Context, period time.Duration, logger *slog.Logger) {
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	// Objects after the last trim: all live then. Growth past it may be
	// garbage, which only a collection can tell.
	var trimmed uint64
	// A node under load collects often on its own, and a forced
	// collection would only add to its latency: trim only after a period
	// without a collection.
	var cycles uint64
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
		busy := sample[2].Value.Uint64() != cycles
		cycles = sample[2].Value.Uint64()
		if busy || free < trimMinFree && objects < trimmed+trimMinFree {
			continue
		}
		debug.FreeOSMemory()
		metrics.Read(sample)
		trimmed, cycles = sample[1].Value.Uint64(), sample[2].Value.Uint64()
		logger.Debug("returned free heap memory to the OS", "free", free, "objects_before", objects, "objects_after", trimmed)
	}
}
