package api

import (
	"bytes"
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// What grpc-go does not do about requests, done here.
//
// A request message that does not decode is the client's fault:
// InvalidArgument, as the Connect path answers; grpc-go answers Internal
// for any codec error. So requestCodec never fails: it leaves such a
// message empty and marked, and the interceptors refuse it before any
// handler sees it. (grpc-go also answers Internal to broken framing below
// the message, a frame cut short or unknown flags, and writes that status
// itself before any code of ours runs; those stay Internal on this path.)
//
// grpc-go bounds no request body in time: a unary request without a
// deadline gets the default one from its start, the body included
// (callRules.requestTap), and a server stream's one request (a watch) must arrive
// within the body read timeout (receiveRules). The next message of a
// bidirectional stream (a lease keep-alive) may take as long as it likes.

// methodKind is what a method's requests look like.
type methodKind int

const (
	unaryMethod  methodKind = iota + 1
	serverStream            // one request, then a stream of responses
	bidiStream              // a stream of requests
)

// malformedMark starts the unknown fields of a message requestCodec could
// not decode, followed by the decoding error. No decoded message has it:
// field number 0 does not parse.
var malformedMark = []byte{0, 0}

// requestCodec is grpc-go's proto codec, but a message that does not
// decode is marked instead of failing.
type requestCodec struct{ encoding.CodecV2 }

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m)
	m.ProtoReflect().SetUnknown(append(bytes.Clone(malformedMark), err.Error()...))
	return nil
}

// malformed returns the decoding error of a message requestCodec marked.
func malformed(v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return nil
	}
	u := m.ProtoReflect().GetUnknown()
	if !bytes.HasPrefix(u, malformedMark) {
		return nil
	}
	return status.Error(codes.InvalidArgument, "malformed request: "+string(u[len(malformedMark):]))
}

// refuseMalformed refuses a unary request requestCodec marked.
func refuseMalformed(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if err := malformed(req); err != nil {
		return nil, err
	}
	return next(ctx, req)
}

type streamCancelKey struct{}

// errSlowRequest ends a server stream whose request did not arrive in time.
var errSlowRequest = errors.New("request message not received in time")

// receiveRules wraps every stream's RecvMsg: see the top of this file.
func receiveRules(kinds map[string]methodKind, timeout time.Duration) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		rs := &recvStream{ServerStream: ss, timeout: timeout}
		if kinds[info.FullMethod] == serverStream {
			rs.cancel, _ = ss.Context().Value(streamCancelKey{}).(context.CancelCauseFunc)
		}
		return handler(srv, rs)
	}
}

type recvStream struct {
	grpc.ServerStream
	timeout time.Duration
	// cancel, until the first RecvMsg, ends the stream if its request
	// takes longer than timeout (grpc-go answers Canceled then).
	cancel context.CancelCauseFunc
}

func (s *recvStream) RecvMsg(m any) error {
	if cancel := s.cancel; cancel != nil {
		s.cancel = nil
		t := time.AfterFunc(s.timeout, func() { cancel(errSlowRequest) })
		defer t.Stop()
	}
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return malformed(m)
}
