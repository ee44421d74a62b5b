package api

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RequestMetrics counts and times the calls a node serves, with the labels
// of go-grpc-prometheus (grpc_type, grpc_service, grpc_method, grpc_code),
// which etcd's dashboards use. One recorder (begin and end below) serves
// both RPC stacks: the Connect interceptor (Connect, gRPC-Web, JSON and
// gRPC on net/http) and grpc-go's interceptors are adapters of a few lines
// that only read the procedure and the error, so a call has the same
// labels whatever protocol it came by.
//
// A nil *RequestMetrics records nothing, and NewHandler and NewGRPCServer
// then add no interceptor at all.
type RequestMetrics struct {
	started *prometheus.CounterVec
	handled *prometheus.CounterVec
	seconds *prometheus.HistogramVec
	// methods caches each procedure's metrics, so that a call costs a map
	// read rather than a label hash (*methodMetrics by procedure).
	methods sync.Map
}

// requestBuckets spans a serializable read on loopback (tens of
// microseconds) to a write that waited out an election (seconds).
var requestBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewRequestMetrics registers the request metrics with reg.
func NewRequestMetrics(reg prometheus.Registerer) *RequestMetrics {
	m := &RequestMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvstore_grpc_server_started_total",
			Help: "RPCs started on the server, by type, service and method, whatever the protocol (Connect, gRPC, gRPC-Web, JSON).",
		}, []string{"grpc_type", "grpc_service", "grpc_method"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvstore_grpc_server_handled_total",
			Help: "RPCs completed on the server, by type, service, method and gRPC status code, whatever the protocol.",
		}, []string{"grpc_type", "grpc_service", "grpc_method", "grpc_code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvstore_grpc_server_handling_seconds",
			Help:    "Time the server took to handle unary RPCs, by service and method, whatever the protocol.",
			Buckets: requestBuckets,
		}, []string{"grpc_type", "grpc_service", "grpc_method"}),
	}
	reg.MustRegister(m.started, m.handled, m.seconds)
	return m
}

type methodMetrics struct {
	started prometheus.Counter
	seconds prometheus.Observer // nil for streams
	ok      prometheus.Counter
	handled *prometheus.CounterVec // curried with type, service, method
}

// gRPC's names of the call types.
const (
	typeUnary        = "unary"
	typeClientStream = "client_stream"
	typeServerStream = "server_stream"
	typeBidiStream   = "bidi_stream"
)

func (m *RequestMetrics) method(procedure, typ string) *methodMetrics {
	if v, ok := m.methods.Load(procedure); ok {
		return v.(*methodMetrics)
	}
	service, method := splitProcedure(procedure)
	labels := prometheus.Labels{"grpc_type": typ, "grpc_service": service, "grpc_method": method}
	mm := &methodMetrics{
		started: m.started.With(labels),
		handled: m.handled.MustCurryWith(labels),
	}
	mm.ok = mm.handled.WithLabelValues(codes.OK.String())
	if typ == typeUnary {
		mm.seconds = m.seconds.With(labels)
	}
	v, _ := m.methods.LoadOrStore(procedure, mm)
	return v.(*methodMetrics)
}

// splitProcedure splits "/pkg.Service/Method".
func splitProcedure(p string) (service, method string) {
	p = strings.TrimPrefix(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "unknown", p
}

// call is one call being served.
type call struct {
	m     *methodMetrics
	start time.Time
}

// begin records the start of a call to procedure of type typ.
func (m *RequestMetrics) begin(procedure, typ string) call {
	mm := m.method(procedure, typ)
	mm.started.Inc()
	return call{m: mm, start: time.Now()}
}

// end records the call's outcome.
func (c call) end(err error) {
	if c.m.seconds != nil {
		c.m.seconds.Observe(time.Since(c.start).Seconds())
	}
	if err == nil {
		c.m.ok.Inc()
		return
	}
	c.m.handled.WithLabelValues(errorCode(err).String()).Inc()
}

// errorCode is the gRPC status code a client sees for err, from either
// stack: Connect's codes have gRPC's numbers.
func errorCode(err error) codes.Code {
	var ce *connect.Error
	switch {
	case err == nil:
		return codes.OK
	case errors.As(err, &ce):
		return codes.Code(ce.Code())
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Unknown
}

// connectInterceptor adapts the recorder to Connect's handlers.
func (m *RequestMetrics) connectInterceptor() connect.Interceptor { return metricsInterceptor{m} }

type metricsInterceptor struct{ m *RequestMetrics }

func (i metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		c := i.m.begin(req.Spec().Procedure, typeUnary)
		resp, err := next(ctx, req)
		c.end(err)
		return resp, err
	}
}

func (i metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		spec := conn.Spec()
		c := i.m.begin(spec.Procedure, connectStreamType(spec.StreamType))
		err := next(ctx, conn)
		c.end(err)
		return err
	}
}

func connectStreamType(t connect.StreamType) string {
	switch t {
	case connect.StreamTypeClient:
		return typeClientStream
	case connect.StreamTypeServer:
		return typeServerStream
	case connect.StreamTypeBidi:
		return typeBidiStream
	}
	return typeUnary
}

// grpcUnary adapts the recorder to grpc-go's unary calls.
func (m *RequestMetrics) grpcUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		c := m.begin(info.FullMethod, typeUnary)
		resp, err := next(ctx, req)
		c.end(err)
		return resp, err
	}
}

// grpcStream adapts the recorder to grpc-go's streams.
func (m *RequestMetrics) grpcStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
		typ := typeBidiStream
		switch {
		case info.IsClientStream && !info.IsServerStream:
			typ = typeClientStream
		case info.IsServerStream && !info.IsClientStream:
			typ = typeServerStream
		}
		c := m.begin(info.FullMethod, typ)
		err := next(srv, ss)
		c.end(err)
		return err
	}
}
