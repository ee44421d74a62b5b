package api

import (
	"context"
	"errors"
	"fmt"
	"github.com/kvstore/kvstore/auth"
	"log/slog"
	"strconv"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/storage"
)

// CompactRevisionMeta is the error metadata (a trailer on streams) that
// carries the compacted revision with an OUT_OF_RANGE answer to a read or
// watch below it.
const CompactRevisionMeta = "Kv-Compact-Revision"

var (
	// ErrDuplicateKey is in the chain of a txn refused for putting one key
	// twice, or putting and deleting it (the etcd face answers etcd's own
	// error for it).
	ErrDuplicateKey = errors.New("duplicate key in txn")
	// ErrQuorum refuses a membership change that would cost the quorum.
	ErrQuorum = errors.New("the remaining voters would lack a quorum")
	// ErrUnknownMember names a node that is not a member.
	ErrUnknownMember = errors.New("no such member")
)

// toConnect maps the store's errors to Connect codes. Anything unknown is an
// internal error, logged here because the client only sees its code.
func toConnect(logger *slog.Logger, op string, err error) error {
	var ce *connect.Error
	var wrongGroup *consensus.WrongGroupError
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, auth.ErrPermissionDenied), errors.Is(err, auth.ErrUnauthenticated), errors.Is(err, auth.ErrInvalid),
		errors.Is(err, auth.ErrNotFound), errors.Is(err, auth.ErrExists), errors.Is(err, auth.ErrFailedPrecondition):
		return authError(fmt.Errorf("%s: %w", op, err))
	case errors.As(err, &wrongGroup):
		return wrongGroupError(op, wrongGroup)
	case errors.Is(err, consensus.ErrNotLeader):
		ce := connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: %w", op, err))
		ce.Meta().Set(notLeaderMeta, "1")
		return ce
	case errors.Is(err, consensus.ErrNoSpace):
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, consensus.ErrCorrupt):
		return connect.NewError(connect.CodeDataLoss, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, consensus.ErrShutdown), errors.Is(err, consensus.ErrRebuilding), errors.Is(err, storage.ErrCorrupt),
		errors.Is(err, consensus.ErrCannotCatchUp),
		errors.Is(err, consensus.ErrStateMachineFailed), errors.Is(err, consensus.ErrRaftLogFailed), errors.Is(err, consensus.ErrLeadershipLost):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, ranges.ErrNoGroup):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, ranges.ErrNameTaken):
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, ranges.ErrBadName), errors.Is(err, ranges.ErrBadReplicas), errors.Is(err, ranges.ErrEmptyRange):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, ranges.ErrCrossesSpans), errors.Is(err, ranges.ErrEmptiesGroup),
		errors.Is(err, ranges.ErrBusy):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, ErrQuorum), errors.Is(err, ErrUnknownMember), errors.Is(err, consensus.ErrOverQuota):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, storage.ErrFutureRevision):
		return connect.NewError(connect.CodeOutOfRange, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, storage.ErrCompacted):
		ce := connect.NewError(connect.CodeOutOfRange, fmt.Errorf("%s: %w", op, err))
		var cerr *storage.CompactedError
		if errors.As(err, &cerr) {
			ce.Meta().Set(CompactRevisionMeta, strconv.FormatUint(cerr.Compacted, 10))
		}
		return ce
	case errors.Is(err, consensus.ErrLeaseNotFound):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, consensus.ErrKeyTooLong):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, consensus.ErrLeaseExists):
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, storage.ErrWatcherBehind):
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, consensus.ErrTimeout):
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%s: %w", op, err))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, fmt.Errorf("%s: %w", op, err))
	}
	logger.Error("request failed", "op", op, "error", err)
	return connect.NewError(connect.CodeInternal, fmt.Errorf("%s: %w", op, err))
}

// shared readies err to be returned to several requests at once. A
// connect.Error makes its metadata map on the first call of Meta, so
// handlers that only read it (isNotLeader, wrongGroupVersion, forwardErr)
// would race on a shared one; made here, before it is shared, they only
// read. What must hold: no one sets metadata on an error they did not
// make.
func shared(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		_ = ce.Meta()
	}
	return err
}

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func tooBig(format string, args ...any) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(format, args...))
}

// prefixed puts where in the request an error was found before its message,
// keeping its code.
func prefixed(where string, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		// Wrapping the cause keeps it for errors.Is (ErrDuplicateKey).
		return connect.NewError(ce.Code(), fmt.Errorf("%s: %w", where, ce.Unwrap()))
	}
	return fmt.Errorf("%s: %w", where, err)
}

// duplicateKey is an error that is ErrDuplicateKey with its own message.
type duplicateKey struct{ error }

func (duplicateKey) Is(target error) bool { return target == ErrDuplicateKey }

func (e duplicateKey) Unwrap() error { return e.error }
