package api

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// DefaultBodyReadTimeout is how long one request message may take to
// arrive once it started, when Options.BodyReadTimeout is 0.
const DefaultBodyReadTimeout = 30 * time.Second

// withBodyRules wraps every request body that net/http serves (Connect,
// gRPC and gRPC-Web, HTTP/1.1 and h2c) in a messageBody.
func withBodyRules(h http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = newMessageBody(r, http.NewResponseController(w), timeout)
		}
		h.ServeHTTP(w, r)
	})
}

// messageBody enforces, below Connect, what a request body must be:
//
//   - Each message arrives within timeout of its first byte: a body sent a
//     byte a second is cut off (net/http bounds only the headers). The
//     wait for the next message of a stream (a lease keep-alive stream)
//     is not bounded, nor is the rest of a request once its body is read
//     (a watch). A unary body is one message, started with the request.
//   - A body that cannot be read (a broken chunked encoding), or whose
//     gRPC, gRPC-Web or Connect streaming frames are malformed (cut short,
//     unknown flags, compressed without an encoding), is the client's
//     fault: InvalidArgument, where Connect answered Internal or Unknown.
//
// The deadline is the connection's (HTTP/1.1) or the stream's (HTTP/2)
// read deadline, through the ResponseController.
type messageBody struct {
	body    io.ReadCloser
	ctx     context.Context
	rc      *http.ResponseController
	timeout time.Duration

	// enveloped bodies carry length-prefixed frames; others are one
	// message.
	enveloped bool
	// compressed tells whether the request named an encoding, which
	// allows the compressed flag.
	compressed bool

	hdr   [5]byte // the frame header being read
	hdrN  int     // bytes of hdr read so far
	left  uint32  // payload bytes of the current frame still to come
	armed bool    // a read deadline is set
	err   error   // sticky
}

func newMessageBody(r *http.Request, rc *http.ResponseController, timeout time.Duration) *messageBody {
	ct := strings.ToLower(r.Header.Get("Content-Type"))
	b := &messageBody{body: r.Body, ctx: r.Context(), rc: rc, timeout: timeout}
	switch {
	case strings.HasPrefix(ct, "application/grpc-web-text"):
		// Base64 of frames: one message, as far as deadlines go;
		// Connect checks its frames.
	case strings.HasPrefix(ct, "application/grpc"):
		b.enveloped = true
		b.compressed = encoded(r.Header.Get("Grpc-Encoding"))
	case strings.HasPrefix(ct, "application/connect+"):
		b.enveloped = true
		b.compressed = encoded(r.Header.Get("Connect-Content-Encoding"))
	}
	if !b.enveloped {
		b.arm(time.Now())
	}
	return b
}

func encoded(enc string) bool { return enc != "" && enc != "identity" }

func (b *messageBody) arm(start time.Time) {
	if b.rc.SetReadDeadline(start.Add(b.timeout)) == nil {
		b.armed = true
	}
}

func (b *messageBody) disarm() {
	if b.armed {
		_ = b.rc.SetReadDeadline(time.Time{})
		b.armed = false
	}
}

// midFrame tells whether part of a frame has been read.
func (b *messageBody) midFrame() bool { return b.hdrN > 0 || b.left > 0 }

func (b *messageBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.body.Read(p)
	if b.enveloped && n > 0 {
		if ferr := b.frames(p[:n], time.Now()); ferr != nil {
			b.fail(ferr)
			return 0, ferr
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		if b.enveloped && b.midFrame() {
			err = connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed request: the body ended inside a frame (%s)", b.where()))
			b.fail(err)
			return n, err
		}
		b.disarm()
	default:
		err = b.readError(err)
		b.fail(err)
	}
	return n, err
}

// fail makes err the answer to every later read, and ends the reads of
// the body now: net/http reads what a handler left of a body before it
// answers (to reuse the connection), which a slow or broken body must not
// hold up. The connection is closed after the answer.
func (b *messageBody) fail(err error) {
	b.err = err
	_ = b.rc.SetReadDeadline(time.Now())
}

// where says how far into its frame the body ended.
func (b *messageBody) where() string {
	if b.hdrN > 0 {
		return fmt.Sprintf("%d of 5 header bytes", b.hdrN)
	}
	return fmt.Sprintf("%d payload bytes missing", b.left)
}

// readError gives a failed read of the body its code.
func (b *messageBody) readError(err error) error {
	var ne net.Error
	switch {
	case b.ctx.Err() != nil:
		return err // the client went away or the call ended: Connect says so
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("request message not received within %v of its start", b.timeout))
	}
	var mbe *http.MaxBytesError
	var ce *connect.Error
	if errors.As(err, &mbe) || errors.As(err, &ce) {
		return err
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed request body: %w", err))
}

// frames follows the frame boundaries through p, read at now: it checks
// each header's flags and keeps the read deadline armed while a frame is
// incomplete.
func (b *messageBody) frames(p []byte, now time.Time) error {
	started := !b.midFrame()
	for len(p) > 0 {
		if b.left == 0 {
			if b.hdrN == 0 {
				started = true
			}
			k := copy(b.hdr[b.hdrN:], p)
			b.hdrN += k
			p = p[k:]
			if b.hdrN < len(b.hdr) {
				break
			}
			b.hdrN = 0
			if err := b.checkFlags(b.hdr[0]); err != nil {
				return err
			}
			b.left = binary.BigEndian.Uint32(b.hdr[1:])
			continue
		}
		k := min(uint32(len(p)), b.left)
		b.left -= k
		p = p[k:]
	}
	switch {
	case !b.midFrame():
		b.disarm()
	case started:
		// A frame began in this read: it has timeout from now.
		b.arm(now)
	}
	return nil
}

// checkFlags refuses flags a request frame cannot carry: bit 0 marks a
// compressed message, allowed when the request names an encoding; the
// others (gRPC-Web's trailers, Connect's end of stream) only go from
// server to client.
func (b *messageBody) checkFlags(f byte) error {
	switch {
	case f == 0:
		return nil
	case f == 1 && b.compressed:
		return nil
	case f == 1:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("malformed request: a frame is marked compressed but the request names no encoding"))
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed request: frame flags 0x%02x", f))
}

func (b *messageBody) Close() error {
	if b.err == nil {
		b.disarm()
	}
	return b.body.Close()
}
