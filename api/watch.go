package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// cancelGrace is how long a cancelled watcher's stream may take to write
// its last message before the write is cut off: a reader that stopped
// reading never takes it, and must not hold the handler.
const cancelGrace = 5 * time.Second

type watchService struct {
	store   Store
	groups  *groupRoutes // nil: only the meta group
	limits  Limits
	logger  *slog.Logger
	closing context.Context
	authz   authorizer
}

var errClosing = errors.New("the node is shutting down; resume the watch on another node")

type responseControllerKey struct{}

// withResponseController hands handlers the stream's ResponseController,
// through which a blocked write can be given a deadline.
func withResponseController(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), responseControllerKey{}, rc)))
	})
}

func (s *watchService) Watch(ctx context.Context, creq *connect.Request[kvstorev1.WatchRequest], stream *connect.ServerStream[kvstorev1.WatchResponse]) error {
	return s.watch(ctx, creq.Msg, stream.Send)
}

// check validates a watch and checks that its caller may read its range.
func (s *watchService) check(ctx context.Context, req *kvstorev1.WatchRequest) error {
	if err := s.limits.watch(req); err != nil {
		return err
	}
	return s.authz.authorize(ctx, nil, false, needsOf(req)...)
}

// watch serves one watch stream, over Connect or gRPC, sending through send.
func (s *watchService) watch(ctx context.Context, req *kvstorev1.WatchRequest, send func(*kvstorev1.WatchResponse) error) error {
	if err := s.check(ctx, req); err != nil {
		return err
	}
	key, end := req.GetKey(), req.GetRangeEnd()
	if req.GetPrefix() {
		end = storage.PrefixEnd(key)
	}
	st, err := s.groups.watchStore(req, s.store)
	if err != nil {
		return err
	}
	w, err := st.Watch(storage.WatchSpec{
		Key:      key,
		End:      end,
		StartRev: uint64(req.GetStartRevision()),
		PrevKV:   req.GetPrevKv(),
	})
	if err != nil {
		return toConnect(s.logger, "watch", err)
	}
	defer w.Close()
	// The node's shutdown ends the stream like a client going away, but
	// answers Unavailable.
	ctx, cancelStream := context.WithCancelCause(ctx)
	defer cancelStream(nil)
	// Hooks rather than a goroutine per stream: a node may hold tens of
	// thousands of watches.
	if s.closing != nil {
		stop := context.AfterFunc(s.closing, func() { cancelStream(errClosing) })
		defer stop()
	}
	stopMoved := s.groups.onMove(req, func() { cancelStream(errRangeMoved) })
	defer stopMoved()
	if rc, ok := ctx.Value(responseControllerKey{}).(*http.ResponseController); ok {
		// A reader that stopped reading holds the handler in a write once
		// its watcher is cancelled: give that write a deadline. (It fails
		// on unusual writers; the cancelled watcher has freed its queue
		// all the same.) Deferred after w.Close, so it runs before it.
		stop := context.AfterFunc(w.Context(), func() { _ = rc.SetWriteDeadline(time.Now().Add(cancelGrace)) })
		defer stop()
	}
	if err := send(&kvstorev1.WatchResponse{Header: st.Header(w.StartedAt()), Created: true}); err != nil {
		return err
	}
	var progress time.Duration
	if p := req.GetProgressInterval(); p != nil {
		progress = p.AsDuration()
	}
	lastSent := time.Now()
	for {
		nctx, cancel := ctx, context.CancelFunc(func() {})
		if progress > 0 {
			nctx, cancel = context.WithTimeout(ctx, progress)
		}
		evs, covered, err := w.Next(nctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				if cause := context.Cause(ctx); errors.Is(cause, errClosing) || errors.Is(cause, errRangeMoved) {
					return connect.NewError(connect.CodeUnavailable, cause)
				}
				return nil // the client went away
			}
			if errors.Is(err, context.DeadlineExceeded) && progress > 0 {
				if rev, ok := w.Progress(); ok {
					if err := send(&kvstorev1.WatchResponse{Header: st.Header(rev)}); err != nil {
						return err
					}
					lastSent = time.Now()
				}
				continue
			}
			return toConnect(s.logger, "watch", err)
		}
		resp := &kvstorev1.WatchResponse{Header: st.Header(covered)}
		for i := range evs {
			if ev := toEvent(&evs[i], req); ev != nil {
				resp.Events = append(resp.Events, ev)
			}
		}
		// Changes the filters left out send nothing, unless progress is
		// due: then the empty response is the progress message.
		if len(resp.Events) == 0 && (progress == 0 || time.Since(lastSent) < progress) {
			continue
		}
		lastSent = time.Now()
		if err := send(resp); err != nil {
			return err
		}
	}
}

func toEvent(e *storage.Event, req *kvstorev1.WatchRequest) *kvstorev1.Event {
	var ev kvstorev1.Event
	switch e.Type {
	case storage.EventPut:
		if req.GetNoPut() {
			return nil
		}
		ev.Type = kvstorev1.EventType_EVENT_TYPE_PUT
	case storage.EventDelete:
		if req.GetNoDelete() {
			return nil
		}
		ev.Type = kvstorev1.EventType_EVENT_TYPE_DELETE
	default:
		return nil
	}
	ev.Kv = consensus.KeyValueProto(e.KV)
	if req.GetPrevKv() && e.HasPrev {
		ev.PrevKv = consensus.KeyValueProto(e.Prev)
	}
	return &ev
}
