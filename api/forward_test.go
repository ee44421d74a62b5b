package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

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

func putWrite(key string) *peerv1.ForwardedWrite {
	return &peerv1.ForwardedWrite{Write: &peerv1.ForwardedWrite_Put{Put: &kvstorev1.PutRequest{Key: []byte(key), Value: []byte("v")}}}
}

// writeAtOnce sends n writes through f at once and checks that each got
// its own answer (echoServe's).
func writeAtOnce(ctx context.Context, f *forwarder, n int) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			d := f.do(ctx, putWrite(key))
			switch {
			case d.err != nil || d.unsent:
				errs[i] = fmt.Errorf("write %s: %+v", key, d)
			case d.res.GetPut().GetHeader().GetNodeId() != key:
				errs[i] = fmt.Errorf("write %s got the answer for %q", key, d.res.GetPut().GetHeader().GetNodeId())
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
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

// TestForwarderWithoutDialer: Peers that cannot dial a forward connection
// fail a write at once, rather than queue it for a stream never opened.
func TestForwarderWithoutDialer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := NewPeers("follower", PeerOptions{}).forwarder("127.0.0.1:1").do(ctx, putWrite("k"))
	if connect.CodeOf(d.err) != connect.CodeInternal || d.unsent {
		t.Fatalf("write without DialForward: %+v, want Internal, not marked unsent", d)
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
	addr, _ := startConnLeader(t, echoServe(nil, ended))
	p := NewPeers("follower", PeerOptions{DialForward: testDialForward("follower")})
	f := p.forwarder(addr)
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
