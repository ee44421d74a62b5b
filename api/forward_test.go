package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// fakeWriteLeader stands in for a leader's PeerWriteService: serve runs
// each ForwardStream; nil serve leaves the stream unimplemented, as on a
// leader of an earlier version.
type fakeWriteLeader struct {
	peerv1connect.UnimplementedPeerWriteServiceHandler
	streams atomic.Int32
	serve   func(context.Context, *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error
}

func (f *fakeWriteLeader) ForwardStream(ctx context.Context, st *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error {
	f.streams.Add(1)
	if f.serve == nil {
		return f.UnimplementedPeerWriteServiceHandler.ForwardStream(ctx, st)
	}
	return f.serve(ctx, st)
}

// startFakeLeader serves h over h2c on a loopback port and returns the
// address.
func startFakeLeader(t *testing.T, h peerv1connect.PeerWriteServiceHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(peerv1connect.NewPeerWriteServiceHandler(h))
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: protocols}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// echoWrites answers every write at once with the write's key as node id.
func echoWrites(_ context.Context, st *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error {
	for {
		msg, err := st.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.Send(echoResponse(msg)); err != nil {
			return err
		}
	}
}

// echoResponse answers every write of msg with the write's key as node id.
func echoResponse(msg *peerv1.ForwardStreamRequest) *peerv1.ForwardStreamResponse {
	resp := &peerv1.ForwardStreamResponse{}
	for _, w := range msg.GetWrites() {
		resp.Results = append(resp.Results, &peerv1.StreamedResult{Id: w.GetId(), Result: &peerv1.ForwardResult{
			Result: &peerv1.ForwardResult_Put{Put: &kvstorev1.PutResponse{Header: &kvstorev1.ResponseHeader{NodeId: string(w.GetWrite().GetPut().GetKey())}}},
		}})
	}
	return resp
}

// echoWritesThenReport is echoWrites that also sends how the stream ended
// to ended.
func echoWritesThenReport(ended chan<- error) func(context.Context, *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error {
	return func(ctx context.Context, st *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error {
		err := echoWrites(ctx, st)
		ended <- err
		return err
	}
}

func putWrite(key string) *peerv1.ForwardedWrite {
	return &peerv1.ForwardedWrite{Write: &peerv1.ForwardedWrite_Put{Put: &kvstorev1.PutRequest{Key: []byte(key), Value: []byte("v")}}}
}

// TestForwarderStream: writes sent at once share one stream and each gets
// its own answer back.
func TestForwarderStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := &fakeWriteLeader{serve: echoWrites}
	f := NewPeers("follower", PeerOptions{}).forwarder(startFakeLeader(t, leader))
	if err := writeAtOnce(ctx, f, 200); err != nil {
		t.Fatal(err)
	}
	if got := leader.streams.Load(); got != 1 {
		t.Fatalf("%d streams opened, want 1", got)
	}
}

// writeAtOnce sends n writes through f at once and checks that each got
// its own answer (echoWrites' or echoServe's).
func writeAtOnce(ctx context.Context, f *forwarder, n int) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			d := f.do(ctx, putWrite(key))
			switch {
			case d.err != nil || d.legacy || d.unsent:
				errs[i] = fmt.Errorf("write %s: %+v", key, d)
			case d.res.GetPut().GetHeader().GetNodeId() != key:
				errs[i] = fmt.Errorf("write %s got the answer for %q", key, d.res.GetPut().GetHeader().GetNodeId())
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// TestForwarderIdleStream: a stream with no writes for a while is closed
// by the follower, after the leader answered everything, and the next
// write opens a new one.
func TestForwarderIdleStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ended := make(chan error, 2)
	leader := &fakeWriteLeader{serve: echoWritesThenReport(ended)}
	f := NewPeers("follower", PeerOptions{}).forwarder(startFakeLeader(t, leader))
	writeThenIdle(t, ctx, f, ended)
	if got := leader.streams.Load(); got != 2 {
		t.Fatalf("%d streams opened, want 2", got)
	}
}

// writeThenIdle makes f's streams idle quickly, and twice sends a write
// and waits for the leader to see its stream end cleanly.
func writeThenIdle(t *testing.T, ctx context.Context, f *forwarder, ended <-chan error) {
	t.Helper()
	f.idle = 50 * time.Millisecond
	for i, key := range []string{"a", "b"} {
		if d := f.do(ctx, putWrite(key)); d.err != nil || d.res.GetPut().GetHeader().GetNodeId() != key {
			t.Fatalf("write %s: %+v", key, d)
		}
		select {
		case err := <-ended:
			if err != nil {
				t.Fatalf("stream %d ended with %v, want a clean end", i+1, err)
			}
		case <-ctx.Done():
			t.Fatalf("stream %d still open after the follower went idle", i+1)
		}
	}
}

// TestForwarderLegacyLeader: a leader that knows no stream makes the
// follower forward writes alone, and the follower does not ask again at
// once.
func TestForwarderLegacyLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := &fakeWriteLeader{}
	f := NewPeers("follower", PeerOptions{}).forwarder(startFakeLeader(t, leader))
	for i := range 3 {
		if d := f.do(ctx, putWrite("k")); !d.legacy {
			t.Fatalf("write %d: %+v, want legacy", i, d)
		}
	}
	if got := leader.streams.Load(); got != 1 {
		t.Fatalf("%d streams tried, want 1", got)
	}
}

// TestForwarderStreamBreaks: when the leader ends the stream with an
// error, the writes it had read get that error (they may have been
// applied: no retry), and the next write opens a new stream.
func TestForwarderStreamBreaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var broken atomic.Bool
	leader := &fakeWriteLeader{}
	leader.serve = func(ctx context.Context, st *connect.BidiStream[peerv1.ForwardStreamRequest, peerv1.ForwardStreamResponse]) error {
		if broken.CompareAndSwap(false, true) {
			if _, err := st.Receive(); err != nil {
				return err
			}
			return connect.NewError(connect.CodeAborted, errors.New("leader went away"))
		}
		return echoWrites(ctx, st)
	}
	f := NewPeers("follower", PeerOptions{}).forwarder(startFakeLeader(t, leader))
	d := f.do(ctx, putWrite("first"))
	if connect.CodeOf(d.err) != connect.CodeAborted || d.unsent || d.legacy {
		t.Fatalf("write on the broken stream: %+v, want the leader's Aborted", d)
	}
	if d := f.do(ctx, putWrite("second")); d.err != nil || d.res.GetPut().GetHeader().GetNodeId() != "second" {
		t.Fatalf("write after the stream broke: %+v", d)
	}
	if got := leader.streams.Load(); got != 2 {
		t.Fatalf("%d streams opened, want 2", got)
	}
}

// TestForwarderDeadLeader: a leader that cannot be dialed never saw the
// write, and the follower's answer says so: a request waiting for a leader
// tries again.
func TestForwarderDeadLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	d := NewPeers("follower", PeerOptions{DialForward: testDialForward("follower")}).forwarder(addr).do(ctx, putWrite("k"))
	if d.err == nil {
		t.Fatalf("write to a dead leader: %+v, want an error", d)
	}
	if !d.unsent && !isNotLeader(forwardErr("leader", addr, d.err)) {
		t.Fatalf("write to a dead leader: %v; want it marked as never sent", d.err)
	}
}

// TestServeStreamEndsOnClosing: a leader shutting down ends a follower's
// forward stream that is still open, rather than wait for the follower to
// close it (the graceful stop of its servers waits for every stream).
func TestServeStreamEndsOnClosing(t *testing.T) {
	closing, shut := context.WithCancel(context.Background())
	p := &peerWriteService{timeout: time.Second, closing: closing}
	open := make(chan struct{})
	defer close(open)
	recv := func() (*peerv1.ForwardStreamRequest, error) {
		<-open // the follower sends nothing and keeps the stream open
		return nil, io.EOF
	}
	send := func(*peerv1.ForwardStreamResponse) error { return nil }
	done := make(chan error, 1)
	go func() { done <- p.serveStream(context.Background(), "follower", recv, send) }()
	shut()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stream ended with %v, want a clean end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream is still served 10 s after the node began closing")
	}
}

// TestPeersCloseEndsStreams: closing the peers ends the open forward
// streams, so their connections close and the leader is not kept waiting.
func TestPeersCloseEndsStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ended := make(chan error, 1)
	leader := &fakeWriteLeader{serve: echoWritesThenReport(ended)}
	p := NewPeers("follower", PeerOptions{})
	f := p.forwarder(startFakeLeader(t, leader))
	if d := f.do(ctx, putWrite("k")); d.err != nil {
		t.Fatalf("write: %+v", d)
	}
	p.Close()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the leader still serves the stream after the follower closed its peers")
	}
	if d := f.do(ctx, putWrite("k2")); d.err == nil || !d.unsent {
		t.Fatalf("write after Close: %+v, want an error marked unsent", d)
	}
}
