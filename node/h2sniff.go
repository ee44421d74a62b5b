package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Picking gRPC out of h2c connections.
//
// gRPC clients speak HTTP/2 with prior knowledge: the connection opens with
// the client preface. Connect and HTTP/JSON clients may too. grpc-go's
// server serves gRPC for far less CPU than net/http's, but only gRPC, and
// it owns a whole connection. So the Mux reads an h2c connection up to its
// first request's headers and hands it to the gRPC listener when the
// content-type is gRPC's, to the HTTP listener otherwise, replaying every
// byte it read.
//
// grpc-go clients send no request before the server's SETTINGS frame, so
// the sniffer sends an empty one (all defaults) as soon as it has seen the
// preface; the server that takes the connection then sends its own, which
// HTTP/2 allows. The client acknowledges both. The first acknowledgement is
// for the sniffer's frame, and is dropped from the stream the server reads:
// net/http's server closes a connection that acknowledges a SETTINGS frame
// it never sent.

const (
	// h2SniffTimeout bounds the wait for a first request after the
	// preface. A client that connects ahead of its first call (grpc-go
	// does after a reconnect) is most likely gRPC: it goes there.
	h2SniffTimeout = 2 * time.Minute
	// h2SniffMaxBytes bounds what the sniffer holds before deciding; past
	// it the connection goes to the HTTP listener, which serves all.
	h2SniffMaxBytes = 256 << 10

	h2FrameHeaderLen    = 9
	h2FrameData         = 0x0
	h2FrameHeaders      = 0x1
	h2FrameSettings     = 0x4
	h2FrameCont         = 0x9
	h2FramePriority     = 0x2
	h2FramePing         = 0x6
	h2FrameWindowUpdate = 0x8
	h2FrameGoAway       = 0x7
	h2FlagAck           = 0x1
	h2FlagEndStream     = 0x1
	h2FlagEndHeaders    = 0x4
	h2FlagPadded        = 0x8
	h2FlagPriority      = 0x20
	h2MaxFrameLen       = 16384 // the default SETTINGS_MAX_FRAME_SIZE we announce

	h2ErrRefusedStream = 0x7
)

// h2Preface is the HTTP/2 client connection preface.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// emptySettings is a SETTINGS frame with no parameters.
var emptySettings = []byte{0, 0, 0, h2FrameSettings, 0, 0, 0, 0, 0}

// sniffResult is where a connection goes and what it replays.
type sniffResult struct {
	grpc     bool
	read     []byte // every byte read, the first included
	settings bool   // the sniffer sent its SETTINGS frame
	stream   uint32 // the first request's stream, once its headers ended
}

// sniffH2 reads conn, whose first byte was first, until it can tell where
// it goes. An error means the connection is broken and must be closed.
func sniffH2(conn net.Conn, first byte, prefaceTimeout, requestTimeout time.Duration) (sniffResult, error) {
	res := sniffResult{read: append(make([]byte, 0, 512), first)}
	// The preface, compared as it arrives: an HTTP/1.1 request that starts
	// with P (POST, PUT, PATCH) can be shorter than it.
	if err := conn.SetReadDeadline(time.Now().Add(prefaceTimeout)); err != nil {
		return res, fmt.Errorf("set sniff deadline: %w", err)
	}
	var buf [len(h2Preface)]byte
	for len(res.read) < len(h2Preface) {
		n, err := conn.Read(buf[:len(h2Preface)-len(res.read)])
		res.read = append(res.read, buf[:n]...)
		if !strings.HasPrefix(h2Preface, string(res.read)) {
			return res, clearDeadline(conn)
		}
		if err != nil {
			if isTimeout(err) {
				return res, clearDeadline(conn)
			}
			return res, fmt.Errorf("read preface: %w", err)
		}
	}
	if err := conn.SetWriteDeadline(time.Now().Add(prefaceTimeout)); err != nil {
		return res, fmt.Errorf("set sniff deadline: %w", err)
	}
	if _, err := conn.Write(emptySettings); err != nil {
		return res, fmt.Errorf("write settings: %w", err)
	}
	res.settings = true
	if err := conn.SetWriteDeadline(time.Time{}); err != nil {
		return res, fmt.Errorf("clear sniff deadline: %w", err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(requestTimeout)); err != nil {
		return res, fmt.Errorf("set sniff deadline: %w", err)
	}

	// Frames up to the end of the first request's header block.
	var block []byte
	pos := len(h2Preface)
	for {
		if err := fill(conn, &res.read, pos+h2FrameHeaderLen); err != nil {
			return sniffEnd(conn, res, err)
		}
		hdr := res.read[pos : pos+h2FrameHeaderLen]
		length, typ, flags := frameLen(hdr), hdr[3], hdr[4]
		if length > h2MaxFrameLen || pos+h2FrameHeaderLen+length > h2SniffMaxBytes {
			return res, clearDeadline(conn) // not for us to judge: HTTP
		}
		if err := fill(conn, &res.read, pos+h2FrameHeaderLen+length); err != nil {
			return sniffEnd(conn, res, err)
		}
		payload := res.read[pos+h2FrameHeaderLen : pos+h2FrameHeaderLen+length]
		stream := binary.BigEndian.Uint32(hdr[5:]) &^ (1 << 31)
		pos += h2FrameHeaderLen + length
		switch typ {
		case h2FrameHeaders:
			frag, ok := headerFragment(payload, flags)
			if !ok {
				return res, clearDeadline(conn)
			}
			block = append(block, frag...)
		case h2FrameCont:
			if block == nil {
				return res, clearDeadline(conn)
			}
			block = append(block, payload...)
		default:
			if !wellFormedBeforeRequest(typ, length, stream) {
				// net/http judges it, and answers a broken connection
				// with a GOAWAY at once instead of waiting for a request.
				return res, clearDeadline(conn)
			}
			continue
		}
		if flags&h2FlagEndHeaders != 0 {
			res.grpc = isGRPCRequest(block)
			res.stream = stream
			return res, clearDeadline(conn)
		}
	}
}

// wellFormedBeforeRequest tells whether a frame that is not HEADERS or
// CONTINUATION may come before a client's first request: connection
// SETTINGS, PING and WINDOW_UPDATE, and PRIORITY, of their sizes.
// Anything else (DATA, a frame of a broken size, an extension frame) goes
// to net/http, which serves every request and refuses broken framing.
func wellFormedBeforeRequest(typ byte, length int, stream uint32) bool {
	switch typ {
	case h2FrameSettings:
		return stream == 0 && length%6 == 0
	case h2FramePing:
		return stream == 0 && length == 8
	case h2FrameWindowUpdate:
		return length == 4
	case h2FramePriority:
		return stream != 0 && length == 5
	}
	return false
}

// sniffEnd decides for a connection that sent no request in time.
func sniffEnd(conn net.Conn, res sniffResult, err error) (sniffResult, error) {
	if !isTimeout(err) {
		return res, fmt.Errorf("read frames: %w", err)
	}
	res.grpc = true
	return res, clearDeadline(conn)
}

// frameLen is the payload length in a frame header.
func frameLen(hdr []byte) int { return int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2]) }

// headerFragment strips a HEADERS frame's padding and priority fields.
func headerFragment(p []byte, flags byte) ([]byte, bool) {
	pad := 0
	if flags&h2FlagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad = int(p[0])
		p = p[1:]
	}
	if flags&h2FlagPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// isGRPCRequest tells from a request's header block whether it is gRPC (not
// gRPC-Web, which net/http serves).
func isGRPCRequest(block []byte) bool {
	grpc := false
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == "content-type" {
			ct := strings.ToLower(f.Value)
			grpc = strings.HasPrefix(ct, "application/grpc") && !strings.HasPrefix(ct, "application/grpc-web")
		}
	})
	dec.SetMaxStringLength(h2SniffMaxBytes)
	if _, err := dec.Write(block); err != nil {
		return false
	}
	return grpc && dec.Close() == nil
}

// fill reads from conn until *b holds at least n bytes.
func fill(conn net.Conn, b *[]byte, n int) error {
	for len(*b) < n {
		if cap(*b) < n {
			nb := make([]byte, len(*b), max(n, 2*cap(*b)))
			copy(nb, *b)
			*b = nb
		}
		k, err := conn.Read((*b)[len(*b):cap(*b)])
		*b = (*b)[:len(*b)+k]
		if err != nil && len(*b) < n {
			return err
		}
	}
	return nil
}

func clearDeadline(conn net.Conn) error {
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear sniff deadline: %w", err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sniffedConn replays what the sniffer read, then reads the socket. When
// the sniffer sent its SETTINGS frame, it drops the client's first SETTINGS
// acknowledgement from what it returns, parsing frame headers until then.
type sniffedConn struct {
	net.Conn

	mu      sync.Mutex
	replay  []byte
	out     []byte // filtered bytes not yet returned
	filter  bool   // still looking for the acknowledgement
	hdr     []byte // a frame header being assembled
	payload int    // bytes of the current frame's payload still to pass
	skip    int    // bytes of the preface still to pass
}

func newSniffedConn(c net.Conn, r sniffResult) *sniffedConn {
	s := &sniffedConn{Conn: c, filter: r.settings, skip: len(h2Preface)}
	if !s.filter {
		s.replay = r.read
		return s
	}
	s.out = s.push(nil, r.read)
	return s
}

// NetConn is the connection underneath.
func (c *sniffedConn) NetConn() net.Conn { return c.Conn }

// Read implements net.Conn.
func (c *sniffedConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if len(c.replay) > 0 {
			n := copy(p, c.replay)
			c.replay = c.replay[n:]
			return n, nil
		}
		if len(c.out) > 0 {
			n := copy(p, c.out)
			c.out = c.out[n:]
			return n, nil
		}
		if !c.filter {
			return c.Conn.Read(p)
		}
		n, err := c.Conn.Read(p)
		c.out = c.push(c.out[:0], p[:n])
		if err != nil && len(c.out) == 0 {
			return 0, err
		}
		if len(c.out) == 0 {
			continue // only a held header or the dropped frame so far
		}
		n = copy(p, c.out)
		c.out = c.out[n:]
		return n, nil
	}
}

// push runs in through the filter, appending what passes to out.
func (c *sniffedConn) push(out, in []byte) []byte {
	for len(in) > 0 {
		switch {
		case !c.filter:
			return append(out, in...)
		case c.skip > 0:
			n := min(c.skip, len(in))
			out, in, c.skip = append(out, in[:n]...), in[n:], c.skip-n
		case c.payload > 0:
			n := min(c.payload, len(in))
			out, in, c.payload = append(out, in[:n]...), in[n:], c.payload-n
		default:
			n := min(h2FrameHeaderLen-len(c.hdr), len(in))
			c.hdr, in = append(c.hdr, in[:n]...), in[n:]
			if len(c.hdr) < h2FrameHeaderLen {
				continue
			}
			length := frameLen(c.hdr)
			if c.hdr[3] == h2FrameSettings && c.hdr[4]&h2FlagAck != 0 && length == 0 {
				c.filter = false // dropped: the rest passes as is
			} else {
				out = append(out, c.hdr...)
				c.payload = length
			}
			c.hdr = c.hdr[:0]
		}
	}
	return out
}
