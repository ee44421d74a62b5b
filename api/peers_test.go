package api

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
)

// servePeer serves h as the peer service on loopback, h2c, and returns its
// address.
func servePeer(t *testing.T, h peerv1connect.PeerServiceHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(peerv1connect.NewPeerServiceHandler(h))
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: protocols}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func peerCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// copier is a StateCopier whose state is fixed bytes at a fixed revision.
type copier struct {
	rev   uint64
	state []byte
	asked uint64
}

func (c *copier) CopyState(_ context.Context, minRev uint64, start func(uint64) (io.Writer, error)) error {
	c.asked = minRev
	w, err := start(c.rev)
	if err != nil {
		return err
	}
	// In uneven writes, as KV.Snapshot's flushes are.
	for b := c.state; len(b) > 0; {
		n := min(len(b), 300_001)
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func TestFetchState(t *testing.T) {
	state := make([]byte, 3<<20+17)
	for i := range state {
		state[i] = byte(rand.N(256))
	}
	c := &copier{rev: 42, state: state}
	addr := servePeer(t, &peerService{state: c, logger: slog.New(slog.DiscardHandler)})
	p := NewPeers("n2", PeerOptions{})
	defer p.Close()
	rc, rev, err := p.FetchState(peerCtx(t), addr, 40)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || rev != 42 || c.asked != 40 || !bytes.Equal(got, state) {
		t.Fatalf("fetched %d bytes at revision %d (asked from %d): %v; want %d bytes at 42", len(got), rev, c.asked, err, len(state))
	}
}

// tamper serves a copy with one byte changed after its hash was taken,
// or with no trailer at all.
type tamper struct {
	peerv1connect.UnimplementedPeerServiceHandler
	noTrailer bool
}

func (h tamper) FetchState(ctx context.Context, req *connect.Request[peerv1.FetchStateRequest], stream *connect.ServerStream[peerv1.FetchStateResponse]) error {
	var sent [][]byte
	send := func(m *peerv1.FetchStateResponse) error {
		if ch := m.GetChunk(); ch != nil {
			ch = bytes.Clone(ch)
			sent = append(sent, ch)
			return nil
		}
		if m.GetTrailer() != nil {
			for i, ch := range sent {
				if i == len(sent)/2 {
					ch[7] ^= 1
				}
				if err := stream.Send(&peerv1.FetchStateResponse{Part: &peerv1.FetchStateResponse_Chunk{Chunk: ch}}); err != nil {
					return err
				}
			}
			if h.noTrailer {
				return nil
			}
		}
		return stream.Send(m)
	}
	ps := &peerService{state: &copier{rev: 9, state: bytes.Repeat([]byte("state"), 1<<20)}, logger: slog.New(slog.DiscardHandler)}
	return ps.fetchState(ctx, req.Msg, send)
}

func TestFetchStateRefusesADamagedCopy(t *testing.T) {
	for _, noTrailer := range []bool{false, true} {
		addr := servePeer(t, tamper{noTrailer: noTrailer})
		p := NewPeers("n2", PeerOptions{})
		rc, _, err := p.FetchState(peerCtx(t), addr, 1)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(rc)
		rc.Close()
		p.Close()
		want := "does not match"
		if noTrailer {
			want = "ended before its trailer"
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("a damaged copy (no trailer: %v) read with %v, want an error saying %q", noTrailer, err, want)
		}
	}
}
