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

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Garbage a node left behind when it went idle is collected: with no more
// allocation the runtime would not collect it by itself.
func TestTrimMemoryCollectsIdleGarbage(t *testing.T) {
	runtime.GC()
	base := heapObjects()
	var keep [][]byte
	for range 64 {
		keep = append(keep, make([]byte, 1<<20))
	}
	runtime.KeepAlive(keep)
	keep = nil
	if heapObjects() < base+32<<20 {
		t.Skip("the runtime collected the garbage already")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go trimMemory(ctx, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	for heapObjects() >= base+32<<20 {
		if ctx.Err() != nil {
			t.Fatalf("%d bytes of heap objects still held after 10s (%d before)", heapObjects(), base)
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
}
