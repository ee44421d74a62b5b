package ctl

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/api/client"
)

// exitCodeError makes kvctl exit with code without printing anything: the
// exit code of the command kvctl lock ran.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// releaseTimeout bounds the unlock and revoke after the work is done,
// which run on a context of their own: the command's may be cancelled.
const releaseTimeout = 5 * time.Second

// commandWaitDelay is how long kvctl lock waits, after the command was
// signalled, for it and its output to finish.
const commandWaitDelay = 10 * time.Second

func (a *app) lockCommand() *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "lock NAME [-- COMMAND [ARG...]]",
		Short: "Hold a cluster-wide lock while a command runs",
		Long: `Lock takes the lock NAME, shared by every kvctl lock (and client.Mutex) of
the cluster using that name, waiting as long as another holds it. Waiters
queue in order of arrival.

With a COMMAND, it runs it while holding the lock, releases the lock when
the command ends, and exits with the command's exit code. Without one, it
prints the lock's key and holds the lock until Ctrl-C or SIGTERM.

The lock is held through a lease of --ttl, kept alive while kvctl runs:
if kvctl dies, the lock is free again at most --ttl later. If the lease is
lost while the lock is held (the cluster was unreachable for --ttl, or the
lease was revoked), another holder may take the lock: kvctl then kills the
command at once, says so on standard error and exits with 1.

Ctrl-C or SIGTERM while the command runs are passed on to it as SIGTERM;
kvctl waits for it to end, then releases the lock. --timeout, when given,
bounds the wait for the lock, not the command.`,
		Example: `  kvctl lock jobs/nightly -- ./run.sh --full
  kvctl lock deploy --ttl 30s -- sh -c 'make deploy'
  kvctl lock maintenance            # hold until Ctrl-C`,
		Args: cobra.MinimumNArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash > 1 {
				return usagef("one lock NAME before --, got %q", args[:dash])
			}
			if ttl <= 0 {
				return usagef("invalid --ttl %v: must be positive", ttl)
			}
			name := args[0]
			c, _, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			cancel()
			defer c.Close()
			ctx := cmd.Context()
			// --timeout, when given, bounds getting the lock only.
			actx, acancel := a.longContext(cmd)
			defer acancel()

			s, err := c.NewSession(actx, client.WithSessionTTL(ttl))
			if err != nil {
				return fmt.Errorf("lock %s: %w", name, err)
			}
			// Revoking on the way out frees the lock even if unlocking
			// failed, and leaves no lease behind.
			defer s.Close()
			m := client.NewMutex(s, name)
			if err := m.Lock(actx); err != nil {
				return err // it names the lock
			}
			release := func() error {
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
				defer rcancel()
				if err := m.Unlock(rctx); err != nil {
					return fmt.Errorf("lock %s: %w", name, err)
				}
				return nil
			}
			if len(args) == 1 {
				return a.holdLock(ctx, s, m, name, release)
			}
			return a.runLocked(ctx, s, name, args[1:], release)
		}),
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 10*time.Second, "lease TTL: how long the lock outlives a kvctl that died")
	return cmd
}

// holdLock prints the lock's key and holds the lock until ctx ends.
func (a *app) holdLock(ctx context.Context, s *client.Session, m *client.Mutex, name string, release func() error) error {
	if err := a.printf("%s\n", m.Key()); err != nil {
		release()
		return err
	}
	select {
	case <-ctx.Done():
		return release()
	case <-s.Done():
		return fmt.Errorf("lock %s lost: %v", name, s.Err())
	}
}

// runLocked runs argv while the lock is held and returns its exit code as
// an exitCodeError, or why it could not run or was killed.
func (a *app) runLocked(ctx context.Context, s *client.Session, name string, argv []string, release func() error) error {
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = a.stdin, a.stdout, a.stderr
	// Output copied through pipes (when kvctl's own output is not a file)
	// must not keep kvctl waiting for a grandchild that holds them.
	c.WaitDelay = commandWaitDelay
	if err := c.Start(); err != nil {
		release()
		return fmt.Errorf("lock %s: run %s: %w", name, argv[0], err)
	}
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()

	var (
		werr      error
		lost      bool
		signalled bool
	)
	ctxDone := ctx.Done()
	for done := false; !done; {
		select {
		case werr = <-waited:
			done = true
		case <-s.Done():
			// Someone else may hold the lock already: stop the command
			// now, without a grace period.
			lost = true
			_ = c.Process.Kill()
			werr = <-waited
			done = true
		case <-ctxDone:
			if !signalled {
				signalled = true
				_ = c.Process.Signal(syscall.SIGTERM)
			}
			ctxDone = nil // keep waiting for the command, and the session
		}
	}
	if lost {
		return fmt.Errorf("lock %s lost while %s ran (%v): killed it", name, argv[0], s.Err())
	}
	if err := release(); err != nil {
		return err
	}
	var ee *exec.ExitError
	switch {
	case werr == nil:
		return nil
	case errors.As(werr, &ee):
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal()) // as shells report it
		}
		return exitCodeError{code}
	default:
		return fmt.Errorf("lock %s: %s: %w", name, argv[0], werr)
	}
}
