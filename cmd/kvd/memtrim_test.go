package main

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func heapFree() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Free heap memory left by a burst goes back to the OS within a period or
// two; without trimMemory the runtime keeps it for minutes.
func TestTrimMemoryReturnsFreeHeap(t *testing.T) {
	var keep [][]byte
	for range 64 {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1 // touch it: resident
		}
		keep = append(keep, b)
	}
	runtime.KeepAlive(keep)
	keep = nil
	runtime.GC() // the burst is now free heap, still held
	if f := heapFree(); f < trimMinFree {
		t.Skipf("the runtime already released the burst (%d bytes free)", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go trimMemory(ctx, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	for heapFree() >= trimMinFree {
		if ctx.Err() != nil {
			t.Fatalf("%d bytes of free heap still held after 10s", heapFree())
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
}
