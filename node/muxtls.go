package node

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/node/tlsconf"
)

// tlsRecordHandshake is the first byte of a TLS connection: the record
// type of its ClientHello.
const tlsRecordHandshake byte = 0x16

// alpnPath maps the peers' ALPN protocols to the byte that must come first
// inside the TLS connection. tlsconf.ALPNPeer carries either the peer
// services' path (MuxBytePeer) or HTTP/2: a node's calls to the API's
// services of another node.
var alpnPath = map[string]byte{
	tlsconf.ALPNRaft:      MuxByteRaft,
	tlsconf.ALPNGroupRaft: MuxByteGroupRaft,
	tlsconf.ALPNGossip:    MuxByteGossip,
	tlsconf.ALPNForward:   MuxByteForward,
}

// errPlaintext is the refusal of a plaintext connection while TLS is on.
var errPlaintext = errors.New("plaintext connection refused: TLS is on")

// plaintextRefusal is what a plaintext HTTP/1 client reads before the
// node closes the connection: a Connect error (JSON), which Connect
// clients show as it is and people read as well.
const plaintextRefusal = "HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" +
	`{"code":"failed_precondition","message":"this kvstore node serves TLS only: use https:// (kvctl: --cacert, or --insecure-skip-tls-verify for --auto-tls nodes)"}` + "\n"

// plaintextGoAway is the refusal an HTTP/2 (h2c, gRPC) client reads: our
// SETTINGS, then a GOAWAY with INADEQUATE_SECURITY and the reason as its
// debug data, which Go's and grpc-go's clients put in their errors.
var plaintextGoAway = func() []byte {
	msg := "this kvstore node serves TLS only: use https:// with the node's CA"
	// Last stream 0, error INADEQUATE_SECURITY (0xc), the message.
	payload := append([]byte{0, 0, 0, 0, 0, 0, 0, 0x0c}, msg...)
	n := len(payload)
	header := []byte{byte(n >> 16), byte(n >> 8), byte(n), 0x7, 0, 0, 0, 0, 0}
	return slices.Concat(emptySettings, header, payload)
}()

// refusePlaintext tells a plaintext client to use TLS, in HTTP/2 when it
// sent HTTP/2's preface, else in HTTP/1. It then ends the writing side and
// reads (briefly, a bounded amount) what the client sent, as net/http does
// before closing: closing with unread bytes would reset the connection and
// could lose the answer on the way.
func refusePlaintext(raw net.Conn, first byte) {
	raw.SetDeadline(time.Now().Add(time.Second))
	answer := []byte(plaintextRefusal)
	if first == h2Preface[0] {
		buf := make([]byte, len(h2Preface)-1)
		n, _ := io.ReadFull(raw, buf)
		if string(first)+string(buf[:n]) == h2Preface {
			answer = plaintextGoAway
		}
	}
	if _, err := raw.Write(answer); err != nil {
		return
	}
	lingerClose(raw)
}

// lingerClose ends the writing side of raw and reads (until the deadline
// set on raw, a bounded amount) what the client sent, before the caller
// closes it: closing with unread bytes resets the connection, and the
// client may then lose the last thing written to it, reading a reset
// instead.
func lingerClose(raw net.Conn) {
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.CopyN(io.Discard, raw, 64<<10)
}

// secure is route's step with TLS on. A connection whose first byte is
// not a TLS handshake is refused, unless it is HTTP and AllowPlaintext
// lets it in (then it is returned as it came). A TLS connection is
// handshaken under HandshakeTimeout with m.TLS, which picks the peer or the
// client configuration by ALPN (package tlsconf); then the first byte
// inside it is read and must fit the protocol negotiated: a peer path's
// byte after that path's protocol (the peer services' after
// tlsconf.ALPNPeer), and never a path's byte after any other. It returns the TLS connection and that byte.
func (m *Mux) secure(raw net.Conn, first byte, log *slog.Logger) (net.Conn, byte, error) {
	m.mu.Lock()
	_, peerPath := m.listeners[first]
	m.mu.Unlock()
	if first != tlsRecordHandshake {
		switch {
		case peerPath:
			m.notes.say(m.logger, "plaintext peer", "mux: refused a plaintext peer connection: TLS is on, and peers must dial with TLS and a peer certificate", "remote", raw.RemoteAddr(), "path", pathName(first))
			return nil, 0, errPlaintext
		case !m.AllowPlaintext:
			refusePlaintext(raw, first)
			m.notes.say(m.logger, "plaintext client", "mux: refused a plaintext client connection: TLS is on (allow them with --allow-plaintext-clients)", "remote", raw.RemoteAddr())
			return nil, 0, errPlaintext
		}
		return raw, first, nil
	}
	tc := tls.Server(&peekedConn{Conn: raw, first: first, pending: true}, m.TLS)
	if err := raw.SetDeadline(time.Now().Add(cmp.Or(m.HandshakeTimeout, DefaultHandshakeTimeout))); err != nil {
		return nil, 0, err
	}
	if err := tc.Handshake(); err != nil {
		log.Debug("mux: TLS handshake failed", "err", err)
		// With TLS 1.3 a client finds its certificate refused (none, or
		// one the CA did not sign) only after it has sent its request:
		// without this, the alert the handshake sent is lost to the reset
		// of closing on that request, and the client reads "connection
		// reset" or "broken pipe" instead of "certificate required".
		raw.SetDeadline(time.Now().Add(time.Second))
		lingerClose(raw)
		return nil, 0, fmt.Errorf("TLS handshake: %w", err)
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, 0, err
	}
	st := tc.ConnectionState()
	proto := st.NegotiatedProtocol
	if tlsconf.IsPeerProtocol(proto) && !tlsconf.IsPeer(&st) {
		return nil, 0, fmt.Errorf("protocol %s without a verified peer certificate", proto)
	}
	inner, err := m.readFirstByte(tc)
	if err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	_, innerPath := m.listeners[inner]
	m.mu.Unlock()
	want, isPath := alpnPath[proto]
	switch {
	case proto == tlsconf.ALPNPeer && inner == MuxBytePeer:
	case isPath && inner != want:
		return nil, 0, fmt.Errorf("TLS protocol %s carries first byte 0x%02x, not 0x%02x", proto, inner, want)
	case !isPath && innerPath:
		return nil, 0, fmt.Errorf("TLS protocol %q carries a peer path's byte 0x%02x", proto, inner)
	}
	return tc, inner, nil
}

// peerDial returns the dial of a peer protocol: dial, then with TLS on
// the handshake for alpn (tlsconf.TLS.DialPeer). Without TLS it is dial.
func peerDial(t *tlsconf.TLS, alpn string, dial func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, network, address string) (net.Conn, error) {
	if t == nil {
		return dial
	}
	if dial == nil {
		dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		raw, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, DefaultHandshakeTimeout)
		defer cancel()
		return t.DialPeer(ctx, raw, alpn, address)
	}
}

// isPeer is api.Options.IsPeer: with TLS on, a call is a node's only when
// its connection negotiated a peer protocol (tlsconf.IsPeer); nil without
// TLS, where nothing can tell.
func isPeer(t *tlsconf.TLS) func(context.Context) bool {
	if t == nil {
		return nil
	}
	return func(ctx context.Context) bool { return tlsconf.IsPeer(api.TLSState(ctx)) }
}
