package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"
)

// Copies of the key-value state (a member's rebuild, an operator's backup)
// are streamed while a read transaction of the store is open, which pins
// the store's files and keeps a restore of it waiting. So the copy is never
// paced by the network directly: the store is read on a goroutine of its
// own into a short queue, and the stream sends from the queue. A receiver
// that takes nothing for copyStall, or a copy that runs past copyMaxHold,
// ends the read (and the stream, with ResourceExhausted); a send that
// then stays blocked holds a goroutine and a connection, never the store.
var (
	copyStall   = 30 * time.Second
	copyMaxHold = time.Hour
)

// copyQueueDepth is how many messages (chunks of up to stateChunkBytes)
// the queue holds.
const copyQueueDepth = 4

// errCopyStalled ends a copy whose receiver stopped taking it.
var errCopyStalled = errors.New("the receiver took no part of the copy for too long; the copy was stopped so as not to hold the store open")

// copyQueue is what the copying goroutine writes to: push queues a send,
// Write queues the copy's bytes in chunks made by chunk.
type copyQueue struct {
	ctx   context.Context
	ch    chan func() error
	chunk func([]byte) func() error
	buf   []byte
}

func (q *copyQueue) push(send func() error) error {
	t := time.NewTimer(copyStall)
	defer t.Stop()
	select {
	case q.ch <- send:
		return nil
	case <-q.ctx.Done():
		return context.Cause(q.ctx)
	case <-t.C:
		return errCopyStalled
	}
}

func (q *copyQueue) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		k := min(len(b), stateChunkBytes-len(q.buf))
		q.buf = append(q.buf, b[:k]...)
		b = b[k:]
		if len(q.buf) == stateChunkBytes {
			if err := q.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (q *copyQueue) flush() error {
	if len(q.buf) == 0 {
		return nil
	}
	// A new buffer per chunk: the send may still read the last one.
	send := q.chunk(q.buf)
	q.buf = nil
	return q.push(send)
}

// streamCopy runs produce, which reads the store and writes through the
// queue it is given, on a goroutine of its own, and runs the queued sends
// on the calling goroutine, in order. It returns the first error of
// either; the sends are done when it returns nil.
func streamCopy(ctx context.Context, chunk func([]byte) func() error, produce func(ctx context.Context, q *copyQueue) error) error {
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pctx, cancelHold := context.WithTimeoutCause(pctx, copyMaxHold,
		fmt.Errorf("the copy took longer than %v; it was stopped so as not to hold the store open", copyMaxHold))
	defer cancelHold()
	q := &copyQueue{ctx: pctx, ch: make(chan func() error, copyQueueDepth), chunk: chunk}
	done := make(chan error, 1)
	go func() {
		err := produce(pctx, q)
		if err == nil {
			err = q.flush()
		}
		close(q.ch)
		done <- err
	}()
	// A send blocked on a receiver that stopped reading: once the copy
	// gave up, give the write a deadline (net/http), or end the stream
	// (grpc-go).
	if rc, ok := ctx.Value(responseControllerKey{}).(*http.ResponseController); ok {
		stop := context.AfterFunc(pctx, func() { _ = rc.SetWriteDeadline(time.Now().Add(cancelGrace)) })
		defer stop()
	}
	if end, ok := ctx.Value(streamCancelKey{}).(context.CancelCauseFunc); ok {
		stop := context.AfterFunc(pctx, func() {
			t := time.AfterFunc(cancelGrace, func() { end(context.Cause(pctx)) })
			context.AfterFunc(ctx, func() { t.Stop() })
		})
		defer stop()
	}
	for send := range q.ch {
		if err := send(); err != nil {
			cancel(err)
			for range q.ch {
			}
			<-done
			return err
		}
	}
	err := <-done
	if errors.Is(err, errCopyStalled) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return resourceExhausted(err)
	}
	return err
}

// resourceExhausted is err with the code ResourceExhausted.
func resourceExhausted(err error) error {
	return connect.NewError(connect.CodeResourceExhausted, err)
}

var _ io.Writer = (*copyQueue)(nil)
