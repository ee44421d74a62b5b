package api

import (
	"context"
	"crypto/tls"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// The node terminates TLS itself, before either RPC stack sees a
// connection (node's Mux): the stacks serve the TLS connection as if it
// were plaintext (HTTP/1.1 or HTTP/2 with prior knowledge). What the
// handshake established reaches a call through its context: ConnContext
// puts it there for net/http (Connect), and grpc-go's transport credentials
// (connTLSCreds) for grpc-go; TLSState reads either.

// ConnTLS is the state of the TLS connection under c (found through the
// wrappers' NetConn), or nil for a plaintext one.
func ConnTLS(c net.Conn) *tls.ConnectionState {
	for c != nil {
		if tc, ok := c.(*tls.Conn); ok {
			st := tc.ConnectionState()
			return &st
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

type tlsStateKey struct{}

// ConnContext is for http.Server.ConnContext: it keeps the TLS state of c,
// if any, for TLSState.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if st := ConnTLS(c); st != nil {
		return context.WithValue(ctx, tlsStateKey{}, st)
	}
	return ctx
}

// TLSState is the TLS state of the connection a call came on, whichever
// stack serves it; nil for a plaintext connection.
func TLSState(ctx context.Context) *tls.ConnectionState {
	if st, ok := ctx.Value(tlsStateKey{}).(*tls.ConnectionState); ok {
		return st
	}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			return &info.State
		}
	}
	return nil
}

// connTLSCreds are grpc-go's transport credentials for connections the node
// already secured (or left plaintext): the handshake is done, so it only
// reports it.
type connTLSCreds struct{}

func (connTLSCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	st := ConnTLS(c)
	if st == nil {
		return c, nil, nil
	}
	return c, credentials.TLSInfo{State: *st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (connTLSCreds) ClientHandshake(ctx context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, nil, nil
}

func (connTLSCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (connTLSCreds) Clone() credentials.TransportCredentials { return connTLSCreds{} }

func (connTLSCreds) OverrideServerName(string) error { return nil }
