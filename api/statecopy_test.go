package api

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// A receiver that stops taking a copy ends the store read (the producer)
// within the stall limit, though its send stays blocked; the stream then
// ends with ResourceExhausted.
func TestStreamCopyStopsReadingWhenTheReceiverStalls(t *testing.T) {
	defer func(d time.Duration) { copyStall = d }(copyStall)
	copyStall = 100 * time.Millisecond
	unblock := make(chan struct{})
	produced := make(chan error, 1)
	sent := 0
	result := make(chan error, 1)
	go func() {
		result <- streamCopy(context.Background(), func(b []byte) func() error {
			return func() error {
				sent++
				if sent == 2 {
					<-unblock // the receiver stops reading
				}
				return nil
			}
		}, func(ctx context.Context, q *copyQueue) error {
			chunk := bytes.Repeat([]byte("x"), stateChunkBytes)
			var err error
			for range 64 {
				if _, err = q.Write(chunk); err != nil {
					break
				}
			}
			produced <- err
			return err
		})
	}()
	select {
	case err := <-produced:
		if !errors.Is(err, errCopyStalled) {
			t.Fatalf("the store read ended with %v, want errCopyStalled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the store read still runs while the receiver takes nothing")
	}
	close(unblock)
	select {
	case err := <-result:
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("streamCopy = %v, want ResourceExhausted", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("streamCopy did not return")
	}
}

// A send that fails stops the store read, and streamCopy returns its error.
func TestStreamCopySendErrorStopsTheRead(t *testing.T) {
	boom := errors.New("connection reset")
	produced := make(chan error, 1)
	err := streamCopy(context.Background(), func(b []byte) func() error {
		return func() error { return boom }
	}, func(ctx context.Context, q *copyQueue) error {
		chunk := bytes.Repeat([]byte("x"), stateChunkBytes)
		var err error
		for range 64 {
			if _, err = q.Write(chunk); err != nil {
				break
			}
		}
		produced <- err
		return err
	})
	if !errors.Is(err, boom) {
		t.Fatalf("streamCopy = %v, want the send's error", err)
	}
	if perr := <-produced; perr == nil {
		t.Fatal("the store read ran to its end after the send failed")
	}
}
