package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// CompactRevisionTrailer is the trailer in which the server names the
// compacted revision when a watch starts below it.
const CompactRevisionTrailer = "Kv-Compact-Revision"

// CompactedError is the error of a watch whose start revision was
// compacted away: the history it asks for is gone, so it cannot resume.
// It wraps the server's connect error (CodeOutOfRange).
type CompactedError struct {
	// CompactRevision is the compacted revision: the oldest revision that
	// can still be watched from (0 when the server did not say).
	CompactRevision int64
	// StartRevision is the revision the watch asked to start from.
	StartRevision int64
	err           error
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watch from revision %d: compacted (compact revision %d): %v", e.StartRevision, e.CompactRevision, e.err)
}

func (e *CompactedError) Unwrap() error { return e.err }

// WatchOption configures Client.Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	onResume   func(err error, fromRevision int64)
	maxBackoff time.Duration
}

// WithResumeHook has the watcher call f, from the goroutine calling
// Receive, each time its stream broke and it is about to open another one:
// err is why, fromRevision the revision it resumes from. kvctl uses it to
// tell the user.
func WithResumeHook(f func(err error, fromRevision int64)) WatchOption {
	return func(o *watchOptions) { o.onResume = f }
}

// WithMaxResumeBackoff caps the wait between two attempts to resume when
// every endpoint fails (default 2s).
func WithMaxResumeBackoff(d time.Duration) WatchOption {
	return func(o *watchOptions) { o.maxBackoff = d }
}

// Watcher is a watch that survives node failures. Use it like a Connect
// server stream:
//
//	w := c.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("config/"), Prefix: true})
//	defer w.Close()
//	for w.Receive() {
//		for _, ev := range w.Msg().GetEvents() { ... }
//	}
//	if err := w.Err(); err != nil { ... }
//
// The first message is the server's created response: no events, and a
// header revision that says up to where the watch is caught up. Each later
// message holds the events of one or more whole revisions, in revision
// order, or is a progress response (no events) when the request asked for
// progress_interval.
//
// When the stream breaks (the node died or is shutting down, the
// connection dropped, the stream ended without an error, the server cut a
// watcher that fell behind with ResourceExhausted), the Watcher opens a new
// one, on the next endpoint, from the revision after the last one it
// delivered: no event is lost and none is delivered twice. The created
// responses of such resumed streams are not delivered. While every
// endpoint fails it keeps trying, waiting up to WithMaxResumeBackoff
// between rounds, for as long as ctx lives; only the very first stream
// gives up after one failed round over the endpoints, so that a watch of a
// cluster that is not there fails instead of hanging.
//
// Receive returns false, for good, when ctx ends (Err is ctx's error), when
// the start revision was compacted (Err is a *CompactedError), or when the
// server refuses the request (InvalidArgument, Unimplemented,
// PermissionDenied, ...).
//
// Receive, Msg, Err and Revision must be called from one goroutine at a
// time. Close may be called from any goroutine, also during Receive.
type Watcher struct {
	c      *Client
	req    *kvstorev1.WatchRequest
	opts   watchOptions
	ctx    context.Context
	cancel context.CancelFunc

	// mu is held by Receive and by Close's cleanup, so that Close never
	// closes a stream Receive is reading.
	mu     sync.Mutex
	stream *connect.ServerStreamForClient[kvstorev1.WatchResponse]
	// idx is the endpoint the stream is (or will be) open on.
	idx int
	// lastRev is the revision the watcher has delivered everything up to;
	// 0 before the first response when the request starts at "now".
	lastRev int64
	created bool
	// fails counts the attempts in a row that failed before receiving
	// anything, to decide when to back off or give up.
	fails int
	// trailer is the trailer of the stream that just failed.
	trailer http.Header
	msg     *kvstorev1.WatchResponse
	err     error
	stopped bool
}

// Watch starts watching what req describes (req is not modified). It does
// not block: the first stream is opened by the first Receive. Close the
// Watcher, or cancel ctx, to end it.
func (c *Client) Watch(ctx context.Context, req *kvstorev1.WatchRequest, opts ...WatchOption) *Watcher {
	o := watchOptions{maxBackoff: 2 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	w := &Watcher{c: c, opts: o, idx: int(c.current.Load()) % len(c.endpoints)}
	w.ctx, w.cancel = context.WithCancel(ctx)
	if req == nil {
		w.err = connect.NewError(connect.CodeInvalidArgument, errors.New("client: nil watch request"))
		w.stopped = true
		return w
	}
	w.req = proto.CloneOf(req)
	if req.GetStartRevision() > 0 {
		w.lastRev = req.GetStartRevision() - 1
	}
	return w
}

// Msg returns the message the last successful Receive got.
func (w *Watcher) Msg() *kvstorev1.WatchResponse { return w.msg }

// Err returns why Receive returned false; nil while it has not.
func (w *Watcher) Err() error { return w.err }

// Revision returns the revision the watcher has delivered every event up
// to: a new watch from Revision()+1 would continue exactly where this one
// is. It is 0 before the first response of a watch that starts at "now".
func (w *Watcher) Revision() int64 { return w.lastRev }

// Close ends the watch. It is safe to call more than once, and from
// another goroutine while Receive blocks (Receive then returns false with
// context.Canceled).
func (w *Watcher) Close() error {
	w.cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stream != nil {
		w.stream.Close()
		w.stream = nil
	}
	return nil
}

// Receive waits for the next message, resuming the watch across failures.
// It returns false when the watch has ended; Err tells why.
func (w *Watcher) Receive() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	for {
		if w.stream == nil {
			stream, err := w.c.endpoints[w.idx].watch.Watch(w.ctx, connect.NewRequest(w.nextRequest()))
			if err != nil {
				w.trailer = nil
				// Connect reports most failures at the first Receive; one
				// here is handled the same way.
				if ferr := w.failed(err); ferr != nil {
					w.stop(ferr)
					return false
				}
				continue
			}
			w.stream = stream
		}
		if w.stream.Receive() {
			if msg, ok := w.accept(w.stream.Msg()); ok {
				w.msg = msg
				return true
			}
			continue
		}
		err := w.stream.Err()
		w.trailer = w.stream.ResponseTrailer()
		w.stream.Close()
		w.stream = nil
		if err == nil {
			// The server ended the stream without an error (a node
			// shutting down may): there is more to watch, go on elsewhere.
			err = connect.NewError(connect.CodeUnavailable, errors.New("watch stream ended by the server"))
		}
		if ferr := w.failed(err); ferr != nil {
			w.stop(ferr)
			return false
		}
	}
}

// nextRequest is the request for the next stream: the caller's, from the
// revision after the last one delivered once anything was.
func (w *Watcher) nextRequest() *kvstorev1.WatchRequest {
	req := proto.CloneOf(w.req)
	if w.created || w.req.GetStartRevision() > 0 {
		req.StartRevision = w.lastRev + 1
	}
	return req
}

// failed handles a stream that broke or could not be opened with err. It
// returns the error that ends the watch, or nil after choosing the
// endpoint for the next attempt and waiting as long as it should.
func (w *Watcher) failed(err error) error {
	if ferr := w.final(err); ferr != nil {
		return ferr
	}
	w.fails++
	n := len(w.c.endpoints)
	if !w.created && w.fails >= n {
		// The first stream never got going on any endpoint: fail like
		// any other call would.
		return fmt.Errorf("watch: %w", err)
	}
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		// The node may be down: resume on the next one. A watcher cut for
		// falling behind may resume where it is.
		w.idx = (w.idx + 1) % n
	}
	if w.opts.onResume != nil {
		w.opts.onResume(err, w.lastRev+1)
	}
	// Try each other endpoint at once, then wait between attempts,
	// doubling from 50ms up to the maximum, while they keep failing.
	if w.fails < n {
		return nil
	}
	d := min(50*time.Millisecond<<min(w.fails-n, 6), w.opts.maxBackoff)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.ctx.Done():
		return w.ctx.Err()
	case <-t.C:
		return nil
	}
}

// accept checks a message from the stream and decides whether to deliver
// it: it drops the created responses of resumed streams and any event at
// or below the last revision delivered (which a correct server never
// sends, but a duplicate must never reach the caller).
func (w *Watcher) accept(msg *kvstorev1.WatchResponse) (out *kvstorev1.WatchResponse, ok bool) {
	defer func() {
		if ok {
			w.fails = 0
		}
	}()
	if w.fails > 0 || !w.created {
		// The endpoint works: later calls may as well go there first.
		w.c.current.Store(uint32(w.idx))
	}
	rev := msg.GetHeader().GetRevision()
	if msg.GetCreated() {
		if w.created {
			// A resumed stream. Not a reason to forget the failures yet:
			// a node that accepts watches and then drops them at once
			// must not be retried in a tight loop.
			return nil, false
		}
		w.created = true
		if w.req.GetStartRevision() == 0 {
			w.lastRev = rev
		}
		return msg, true
	}
	if len(msg.GetEvents()) == 0 {
		// Progress: the node has nothing for us up to rev.
		if rev > w.lastRev {
			w.lastRev = rev
		}
		return msg, true
	}
	events := msg.Events[:0:0]
	for _, ev := range msg.GetEvents() {
		if ev.GetKv().GetModRevision() > w.lastRev {
			events = append(events, ev)
		}
	}
	if len(events) == 0 {
		return nil, false
	}
	if len(events) != len(msg.Events) {
		msg = proto.CloneOf(msg)
		msg.Events = events
	}
	last := events[len(events)-1].GetKv().GetModRevision()
	w.lastRev = max(w.lastRev, last, rev)
	return msg, true
}

// final returns the error that ends the watch for good when err is one, or
// nil when the watch should resume.
func (w *Watcher) final(err error) error {
	if w.ctx.Err() != nil {
		return w.ctx.Err()
	}
	switch connect.CodeOf(err) {
	case connect.CodeOutOfRange:
		start := w.req.GetStartRevision()
		if w.created {
			start = w.lastRev + 1
		}
		return &CompactedError{CompactRevision: compactRevision(err, w.trailer), StartRevision: start, err: err}
	case connect.CodeInvalidArgument, connect.CodeUnimplemented, connect.CodePermissionDenied,
		connect.CodeUnauthenticated, connect.CodeFailedPrecondition, connect.CodeNotFound:
		// Every node would say the same.
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

func (w *Watcher) stop(err error) {
	w.err = err
	w.stopped = true
	w.cancel()
}

// compactRevisionText finds the revision in a message like "compacted
// revision 42" or "compact revision: 42".
var compactRevisionText = regexp.MustCompile(`compact(?:ed)?[ _-]?revision\D{0,3}(\d+)`)

// compactRevision returns the compacted revision an OutOfRange watch error
// names: from the trailer (in the error's metadata or the stream's), else
// from its message.
func compactRevision(err error, trailer http.Header) int64 {
	var ce *connect.Error
	var vals []string
	if errors.As(err, &ce) {
		vals = append(vals, ce.Meta().Get(CompactRevisionTrailer))
	}
	vals = append(vals, trailer.Get(CompactRevisionTrailer))
	for _, v := range vals {
		if n, perr := strconv.ParseInt(v, 10, 64); perr == nil {
			return n
		}
	}
	if m := compactRevisionText.FindStringSubmatch(err.Error()); m != nil {
		if n, perr := strconv.ParseInt(m[1], 10, 64); perr == nil {
			return n
		}
	}
	return 0
}
