// Package client is the Go client of kvstore, a Raft-replicated key-value
// store.
//
// A Client holds one generated Connect client per node endpoint and exposes
// them through the KV and Cluster fields, which implement the generated
// kvstorev1connect interfaces and fail over between endpoints when a node is
// down or has no leader. See Client for the exact retry rules.
//
// Deadlines and cancellation come from the context of each call; the Client
// has no timeout of its own.
package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// Protocol names accepted by WithProtocol.
const (
	// ProtocolConnect is the Connect protocol over HTTP/1.1 (the default).
	ProtocolConnect = "connect"
	// ProtocolGRPC is gRPC, which needs HTTP/2: cleartext (h2c, prior
	// knowledge) for http:// endpoints and TLS for https:// ones.
	ProtocolGRPC = "grpc"
	// ProtocolGRPCWeb is gRPC-Web over HTTP/1.1.
	ProtocolGRPCWeb = "grpcweb"
)

const (
	// DefaultMaxMessageBytes caps the size of one request or response
	// message. It keeps a confused server (or client) from making the other
	// side buffer an unbounded message; WithClientOptions can raise it.
	DefaultMaxMessageBytes = 4 << 20
	// DefaultDialTimeout bounds one TCP connection attempt. It is shorter
	// than a typical call deadline on purpose: a node that silently drops
	// packets would otherwise use up the whole deadline, and the call could
	// never fail over to the next endpoint.
	DefaultDialTimeout = 2 * time.Second
)

// Client talks to a kvstore cluster through a list of endpoints, failing
// over between them.
//
// Every call goes to the current endpoint. When it fails with
// connect.CodeUnavailable (the node has no leader or is shutting down, or
// the connection could not be made, which Connect also reports as
// CodeUnavailable), the call moves on to the next endpoint in the list and
// is tried again, at most once per endpoint and only while its context is
// alive. The endpoint that answers becomes the current one for later calls.
// Any other error (NotFound, InvalidArgument, DeadlineExceeded, ...) is
// returned at once: another node would answer the same.
//
// Reads (Get, Range, Status, Members, and Txn whose operations are all reads)
// are retried on any CodeUnavailable. Writes (Put, Delete, and Txn with a
// put or delete) are retried only when the request surely never reached a
// server, that is when dialing the endpoint failed (connection refused, no
// route, DNS failure, dial timeout), or when the server marked its
// Unavailable answer as one that no leader took (the Kvstore-Not-Leader
// metadata: it was refused before reaching raft). Any other node that answered Unavailable may
// still have forwarded the write to the leader, which may have committed it
// before the answer was lost; a connection that broke mid-call may have
// delivered the request. Retrying such a write elsewhere could apply it
// twice: a Put could overwrite a newer value written in between, a Delete
// could remove a key re-created in between, and a Txn could run its
// operations twice. Such errors go back to the caller, who knows whether
// the write is safe to repeat.
//
// A Client is safe for concurrent use.
type Client struct {
	// KV is the key-value API, with failover.
	KV kvstorev1connect.KVServiceClient
	// Cluster is the cluster API, with failover.
	Cluster kvstorev1connect.ClusterServiceClient
	// Lease is the lease API, with failover (KeepAlive, a bidi stream,
	// goes to the current endpoint only: see leaseFailover.KeepAlive).
	// KeepAlive and NewSession build a keep-alive loop on it.
	Lease kvstorev1connect.LeaseServiceClient
	// Auth manages users, roles and the authentication switch, with
	// failover.
	Auth kvstorev1connect.AuthServiceClient

	endpoints []endpoint
	// current is the index in endpoints of the endpoint calls go to first.
	current atomic.Uint32
	// transport is the transport New built, closed by Close; nil when the
	// caller supplied its own http.Client, which the caller owns.
	transport *http.Transport
}

// endpoint is one node: its base URL and the generated clients for it.
type endpoint struct {
	url     string
	kv      kvstorev1connect.KVServiceClient
	cluster kvstorev1connect.ClusterServiceClient
	watch   kvstorev1connect.WatchServiceClient
	lease   kvstorev1connect.LeaseServiceClient
	maint   kvstorev1connect.MaintenanceServiceClient
	auth    kvstorev1connect.AuthServiceClient
}

// Option configures New.
type Option func(*options)

type options struct {
	protocol    string
	httpClient  *http.Client
	dialTimeout time.Duration
	connectOpts []connect.ClientOption
	tls         *tls.Config
	// user and password: WithCredentials.
	user, password string
}

// WithTLS makes the Client speak TLS with cfg (its root CAs, client
// certificate, ServerName): endpoints given as "host:port" then mean
// "https://host:port". It has no effect together with WithHTTPClient, whose
// transport has its own TLS configuration. Without it, https:// endpoints
// are verified against the system's roots.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// WithProtocol selects the wire protocol: "connect" (the default), "grpc" or
// "grpcweb" ("grpc-web" is accepted too). New fails on any other value.
func WithProtocol(p string) Option {
	return func(o *options) { o.protocol = p }
}

// WithHTTPClient makes the Client send its requests through hc instead of an
// http.Client of its own. The caller keeps ownership: Close does not touch
// hc. For the "grpc" protocol over http:// endpoints, hc's transport must
// speak cleartext HTTP/2 (h2c).
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.httpClient = hc }
}

// WithDialTimeout bounds one TCP connection attempt (DefaultDialTimeout when
// not given). It has no effect together with WithHTTPClient.
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) { o.dialTimeout = d }
}

// WithClientOptions adds Connect client options (interceptors, codecs,
// compression, message size limits, ...) to every generated client. They
// apply after the Client's own, so they win.
func WithClientOptions(opts ...connect.ClientOption) Option {
	return func(o *options) { o.connectOpts = append(o.connectOpts, opts...) }
}

// New returns a Client for the given endpoints. An endpoint is either
// "host:port", which means "http://host:port", or a full "http://" or
// "https://" URL, with an optional path prefix. The list must not be empty.
// New does not dial: a node that is down is only noticed by a call.
func New(endpoints []string, opts ...Option) (*Client, error) {
	o := options{protocol: ProtocolConnect, dialTimeout: DefaultDialTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if len(endpoints) == 0 {
		return nil, errors.New("client: no endpoints")
	}
	urls := make([]string, len(endpoints))
	for i, e := range endpoints {
		if o.tls != nil && !strings.Contains(e, "://") {
			e = "https://" + strings.TrimSpace(e)
		}
		u, err := EndpointURL(e)
		if err != nil {
			return nil, fmt.Errorf("client: endpoint %q: %w", e, err)
		}
		urls[i] = u
	}

	connectOpts := []connect.ClientOption{
		connect.WithSendMaxBytes(DefaultMaxMessageBytes),
		connect.WithReadMaxBytes(DefaultMaxMessageBytes),
	}
	switch strings.ToLower(o.protocol) {
	case ProtocolConnect, "":
	case ProtocolGRPC:
		connectOpts = append(connectOpts, connect.WithGRPC())
	case ProtocolGRPCWeb, "grpc-web":
		connectOpts = append(connectOpts, connect.WithGRPCWeb())
	default:
		return nil, fmt.Errorf("client: unknown protocol %q (want connect, grpc or grpcweb)", o.protocol)
	}
	c := &Client{}
	if o.user != "" {
		// Before the caller's own interceptors: a retry of theirs carries it.
		connectOpts = append(connectOpts, connect.WithInterceptors(tokenInterceptor{&tokens{c: c, user: o.user, password: o.password}}))
	}
	connectOpts = append(connectOpts, o.connectOpts...)

	hc := o.httpClient
	if hc == nil {
		c.transport = newTransport(strings.EqualFold(o.protocol, ProtocolGRPC), o.dialTimeout)
		if o.tls != nil {
			c.transport.TLSClientConfig = o.tls.Clone()
		}
		// No http.Client.Timeout: deadlines come from each call's context,
		// and a client-wide timeout would cut long linearizable reads
		// that the caller allowed more time.
		hc = &http.Client{Transport: c.transport}
	}
	c.endpoints = make([]endpoint, len(urls))
	for i, u := range urls {
		c.endpoints[i] = endpoint{
			url:     u,
			kv:      kvstorev1connect.NewKVServiceClient(hc, u, connectOpts...),
			cluster: kvstorev1connect.NewClusterServiceClient(hc, u, connectOpts...),
			watch:   kvstorev1connect.NewWatchServiceClient(hc, u, connectOpts...),
			lease:   kvstorev1connect.NewLeaseServiceClient(hc, u, connectOpts...),
			maint:   kvstorev1connect.NewMaintenanceServiceClient(hc, u, connectOpts...),
			auth:    kvstorev1connect.NewAuthServiceClient(hc, u, connectOpts...),
		}
	}
	c.KV = kvFailover{c}
	c.Cluster = clusterFailover{c}
	c.Lease = leaseFailover{c}
	c.Auth = authFailover{c}
	return c, nil
}

// Endpoints returns the base URLs of the endpoints, in the order they are
// tried.
func (c *Client) Endpoints() []string {
	urls := make([]string, len(c.endpoints))
	for i, e := range c.endpoints {
		urls[i] = e.url
	}
	return urls
}

// Close closes the idle connections of the http.Client New built. It leaves
// a client supplied with WithHTTPClient alone. The Client still works after
// Close, dialing anew; Close is meant for when the caller is done with it.
func (c *Client) Close() {
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// EndpointURL turns "host:port" or an http(s) URL into a base URL without a
// trailing slash, refusing anything else.
func EndpointURL(e string) (string, error) {
	e = strings.TrimSpace(e)
	if e == "" {
		return "", errors.New("empty endpoint")
	}
	if !strings.Contains(e, "://") {
		if _, _, err := net.SplitHostPort(e); err != nil {
			return "", fmt.Errorf("want host:port or an http(s) URL: %w", err)
		}
		e = "http://" + e
	}
	u, err := url.Parse(e)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("a query or fragment has no meaning in an endpoint")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// newTransport returns the transport for the Client's own http.Client.
func newTransport(grpc bool, dialTimeout time.Duration) *http.Transport {
	p := new(http.Protocols)
	// TLS endpoints negotiate HTTP/2 through ALPN either way.
	p.SetHTTP2(true)
	if grpc {
		// gRPC needs HTTP/2, and on http:// endpoints that means h2c with
		// prior knowledge, which net/http uses for http:// URLs only when
		// HTTP/1 is not allowed.
		p.SetUnencryptedHTTP2(true)
	} else {
		// Connect and gRPC-Web unary calls are plain request/response, for
		// which HTTP/1.1 with keep-alives is enough and works through any
		// proxy or load balancer in front of the nodes.
		p.SetHTTP1(true)
	}
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		// No proxy from the environment: nodes are dialed directly, and a
		// proxy would turn "node down" into a proxy error that no longer
		// proves a write never left this process (see Client).
		Proxy:               nil,
		DialContext:         d.DialContext,
		Protocols:           p,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 16, // http.DefaultMaxIdleConnsPerHost is 2, too few for concurrent callers.
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}
