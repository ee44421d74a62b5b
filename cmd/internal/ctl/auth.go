package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kvstore/kvstore/api/client"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// envUser and envPassword set --user and --password when the flags are
// not given.
const (
	envUser     = "KVCTL_USER"
	envPassword = "KVCTL_PASSWORD"
)

// credentials returns the client option of --user and --password (nil
// without --user), asking for the password when it was left out.
func (a *app) credentials() (client.Option, error) {
	name, pw, err := a.userPassword()
	if err != nil || name == "" {
		return nil, err
	}
	return client.WithCredentials(name, pw), nil
}

// userPassword returns --user's name and password ("" without --user),
// asking for the password when it was left out.
func (a *app) userPassword() (string, string, error) {
	if a.user == "" {
		if a.password != "" {
			return "", "", usagef("--password needs --user")
		}
		return "", "", nil
	}
	name, pw, hasPW := strings.Cut(a.user, ":")
	if name == "" {
		return "", "", usagef("invalid --user %q: want NAME or NAME:PASSWORD", a.user)
	}
	switch {
	case hasPW && a.password != "":
		return "", "", usagef("give the password in --user NAME:PASSWORD or in --password, not both")
	case !hasPW && a.password != "":
		pw = a.password
	case !hasPW:
		var err error
		if pw, err = a.readPassword("Password: "); err != nil {
			return "", "", err
		}
	}
	return name, pw, nil
}

// readPassword reads a password: from the terminal without echo when
// standard input is one, else one line of standard input.
func (a *app) readPassword(prompt string) (string, error) {
	if f, ok := a.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(a.stderr, prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(a.stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	if a.stdinLines == nil {
		a.stdinLines = bufio.NewReader(a.stdin)
	}
	line, err := a.stdinLines.ReadString('\n')
	if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
		return "", fmt.Errorf("read password from standard input (not a terminal): %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// newPassword is the password of a user being added or changed: given
// (NAME:PASSWORD or --new-user-password) or asked for, twice on a
// terminal.
func (a *app) newPassword(user, given string, ok bool) (string, error) {
	if ok {
		if given == "" {
			return "", usagef("empty password for %s", user)
		}
		return given, nil
	}
	pw, err := a.readPassword("Password of " + user + ": ")
	if err != nil {
		return "", err
	}
	if f, isFile := a.stdin.(*os.File); isFile && term.IsTerminal(int(f.Fd())) {
		again, err := a.readPassword("Type password of " + user + " again for confirmation: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("the passwords differ")
		}
	}
	if pw == "" {
		return "", fmt.Errorf("empty password for %s", user)
	}
	return pw, nil
}

// authChange sends one change and prints done (or the answer as JSON).
func (a *app) authChange(cmd *cobra.Command, change *kvstorev1.AuthChangeRequest, op, done string) error {
	c, ctx, cancel, err := a.newClient(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	defer cancel()
	resp, err := c.Auth.AuthChange(ctx, connect.NewRequest(change))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if a.json() {
		return a.printJSON(resp.Msg)
	}
	return a.printf("%s\n", done)
}

// authList fetches the users and roles.
func (a *app) authList(ctx context.Context, c *client.Client, op string) (*kvstorev1.AuthListResponse, error) {
	resp, err := c.Auth.AuthList(ctx, connect.NewRequest(&kvstorev1.AuthListRequest{}))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return resp.Msg, nil
}

func (a *app) withList(op string, f func(*kvstorev1.AuthListResponse) error) func(*cobra.Command, []string) error {
	return a.runE(func(cmd *cobra.Command, _ []string) error {
		c, ctx, cancel, err := a.newClient(cmd.Context())
		if err != nil {
			return err
		}
		defer c.Close()
		defer cancel()
		l, err := a.authList(ctx, c, op)
		if err != nil {
			return err
		}
		return f(l)
	})
}

func (a *app) userCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Add, delete, list and change users",
		Long: `User manages the users of the cluster, as etcdctl user does. While
authentication is on, only a user with the root role may.`,
	}
	var noPassword bool
	var newPassword string
	add := &cobra.Command{
		Use:   "add NAME[:PASSWORD]",
		Short: "Add a user",
		Long: `Add adds a user. The password comes after a colon, from
--new-user-password, or is asked for (twice on a terminal; one line of
standard input otherwise). The node hashes it (bcrypt); it is never stored.
--no-password makes a user that logs in only with a client certificate.`,
		Example: `  kvctl user add root:secret
  kvctl user add alice --new-user-password alicepw
  kvctl user add svc --no-password`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			name, pw, ok := strings.Cut(args[0], ":")
			if cmd.Flags().Changed("new-user-password") {
				if ok {
					return usagef("give the password after the colon or in --new-user-password, not both")
				}
				pw, ok = newPassword, true
			}
			add := &kvstorev1.UserAdd{Name: name, NoPassword: noPassword}
			if !noPassword {
				p, err := a.newPassword(name, pw, ok)
				if err != nil {
					return err
				}
				add.Password = p
			} else if ok {
				return usagef("--no-password with a password")
			}
			return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: add}}, "user add", "User "+name+" created")
		}),
	}
	add.Flags().BoolVar(&noPassword, "no-password", false, "a user without a password (client certificate login)")
	add.Flags().StringVar(&newPassword, "new-user-password", "", "the new user's `password`, instead of asking for it")

	var passwd string
	passwdCmd := &cobra.Command{
		Use:     "passwd NAME",
		Short:   "Change a user's password",
		Long:    `Passwd sets a new password; the user's tokens issued before stop working.`,
		Example: `  kvctl user passwd alice --new-user-password newpw`,
		Args:    cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			pw, err := a.newPassword(args[0], passwd, cmd.Flags().Changed("new-user-password"))
			if err != nil {
				return err
			}
			return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserChangePassword{
				UserChangePassword: &kvstorev1.UserChangePassword{Name: args[0], Password: pw}}}, "user passwd", "Password updated")
		}),
	}
	passwdCmd.Flags().StringVar(&passwd, "new-user-password", "", "the new `password`, instead of asking for it")

	cmd.AddCommand(add, passwdCmd,
		&cobra.Command{
			Use:   "delete NAME",
			Short: "Delete a user",
			Args:  cobra.ExactArgs(1),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserDelete{UserDelete: &kvstorev1.UserDelete{Name: args[0]}}},
					"user delete", "User "+args[0]+" deleted")
			}),
		},
		&cobra.Command{
			Use:   "grant-role USER ROLE",
			Short: "Give a user a role",
			Args:  cobra.ExactArgs(2),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: args[0], Role: args[1]}}},
					"user grant-role", "Role "+args[1]+" is granted to user "+args[0])
			}),
		},
		&cobra.Command{
			Use:   "revoke-role USER ROLE",
			Short: "Take a role from a user",
			Args:  cobra.ExactArgs(2),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserRevokeRole{UserRevokeRole: &kvstorev1.UserRevokeRole{User: args[0], Role: args[1]}}},
					"user revoke-role", "Role "+args[1]+" is revoked from user "+args[0])
			}),
		},
		&cobra.Command{
			Use:   "list",
			Short: "List the users",
			Args:  cobra.NoArgs,
			RunE: a.withList("user list", func(l *kvstorev1.AuthListResponse) error {
				if a.json() {
					return a.printJSON(&kvstorev1.AuthListResponse{Header: l.GetHeader(), Users: l.GetUsers()})
				}
				for _, u := range l.GetUsers() {
					if err := a.printf("%s\n", u.GetName()); err != nil {
						return err
					}
				}
				return nil
			}),
		},
		&cobra.Command{
			Use:   "get NAME",
			Short: "Show a user's roles",
			Args:  cobra.ExactArgs(1),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.withList("user get", func(l *kvstorev1.AuthListResponse) error {
					for _, u := range l.GetUsers() {
						if u.GetName() == args[0] {
							if a.json() {
								return a.printJSON(u)
							}
							return a.printf("User: %s\nRoles: %s\n", u.GetName(), strings.Join(u.GetRoles(), " "))
						}
					}
					return notFound("user get", "user %q not found", args[0])
				})(cmd, nil)
			}),
		},
	)
	return cmd
}

// permType parses read, write or readwrite.
func permType(s string) (kvstorev1.PermissionType, error) {
	switch strings.ToLower(s) {
	case "read":
		return kvstorev1.PermissionType_PERMISSION_TYPE_READ, nil
	case "write":
		return kvstorev1.PermissionType_PERMISSION_TYPE_WRITE, nil
	case "readwrite":
		return kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE, nil
	}
	return 0, usagef("invalid permission type %q: want read, write or readwrite", s)
}

// permRange turns KEY [END], --prefix and --from-key into a permission's
// key and range end.
func permRange(args []string, prefix, fromKey bool) ([]byte, []byte, error) {
	key := []byte(args[0])
	switch {
	case prefix && fromKey:
		return nil, nil, usagef("--prefix and --from-key do not go together")
	case (prefix || fromKey) && len(args) > 1:
		return nil, nil, usagef("a range end with --prefix or --from-key")
	case prefix:
		return key, storage.PrefixEnd(key), nil
	case fromKey:
		return key, []byte{0}, nil
	case len(args) > 1:
		return key, []byte(args[1]), nil
	}
	return key, nil, nil
}

// showRange shows a permission's keys as etcdctl does.
func showRange(p *kvstorev1.Permission) string {
	key, end := p.GetKey(), p.GetRangeEnd()
	switch {
	case len(end) == 0:
		return string(key)
	case len(end) == 1 && end[0] == 0:
		return fmt.Sprintf("[%s, <open ended>", key)
	case string(end) == string(storage.PrefixEnd(key)):
		return fmt.Sprintf("[%s, %s) (prefix %s)", key, end, key)
	}
	return fmt.Sprintf("[%s, %s)", key, end)
}

func (a *app) roleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "role",
		Short: "Add, delete, list and change roles",
		Long: `Role manages roles and their permissions, as etcdctl role does: a role
grants read, write or readwrite on a key, a range [KEY, END), a prefix
(--prefix) or every key from KEY on (--from-key). While authentication is
on, only a user with the root role may.`,
	}
	var prefix, fromKey bool
	grant := &cobra.Command{
		Use:   "grant-permission ROLE read|write|readwrite KEY [END]",
		Short: "Grant a role a permission",
		Example: `  kvctl role grant-permission app readwrite app/ --prefix
  kvctl role grant-permission app read config
  kvctl role grant-permission app write logs/a logs/n`,
		Args: cobra.RangeArgs(3, 4),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			typ, err := permType(args[1])
			if err != nil {
				return err
			}
			key, end, err := permRange(args[2:], prefix, fromKey)
			if err != nil {
				return err
			}
			return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{
				Role: args[0], Permission: &kvstorev1.Permission{Type: typ, Key: key, RangeEnd: end}}}}, "role grant-permission", "Role "+args[0]+" updated")
		}),
	}
	grant.Flags().BoolVar(&prefix, "prefix", false, "grant on every key starting with KEY")
	grant.Flags().BoolVar(&fromKey, "from-key", false, "grant on every key from KEY on")
	var rprefix, rfromKey bool
	revoke := &cobra.Command{
		Use:   "revoke-permission ROLE KEY [END]",
		Short: "Take a permission from a role",
		Long:  `Revoke-permission removes the role's permission on exactly these keys.`,
		Args:  cobra.RangeArgs(2, 3),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			key, end, err := permRange(args[1:], rprefix, rfromKey)
			if err != nil {
				return err
			}
			return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleRevokePermission{RoleRevokePermission: &kvstorev1.RoleRevokePermission{
				Role: args[0], Key: key, RangeEnd: end}}}, "role revoke-permission", "Permission of role "+args[0]+" revoked")
		}),
	}
	revoke.Flags().BoolVar(&rprefix, "prefix", false, "the permission on every key starting with KEY")
	revoke.Flags().BoolVar(&rfromKey, "from-key", false, "the permission on every key from KEY on")
	cmd.AddCommand(grant, revoke,
		&cobra.Command{
			Use:   "add NAME",
			Short: "Add a role",
			Args:  cobra.ExactArgs(1),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: args[0]}}}, "role add", "Role "+args[0]+" created")
			}),
		},
		&cobra.Command{
			Use:   "delete NAME",
			Short: "Delete a role (and take it from every user)",
			Args:  cobra.ExactArgs(1),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleDelete{RoleDelete: &kvstorev1.RoleDelete{Name: args[0]}}}, "role delete", "Role "+args[0]+" deleted")
			}),
		},
		&cobra.Command{
			Use:   "list",
			Short: "List the roles",
			Args:  cobra.NoArgs,
			RunE: a.withList("role list", func(l *kvstorev1.AuthListResponse) error {
				if a.json() {
					return a.printJSON(&kvstorev1.AuthListResponse{Header: l.GetHeader(), Roles: l.GetRoles()})
				}
				for _, r := range l.GetRoles() {
					if err := a.printf("%s\n", r.GetName()); err != nil {
						return err
					}
				}
				return nil
			}),
		},
		&cobra.Command{
			Use:   "get NAME",
			Short: "Show a role's permissions",
			Args:  cobra.ExactArgs(1),
			RunE: a.runE(func(cmd *cobra.Command, args []string) error {
				return a.withList("role get", func(l *kvstorev1.AuthListResponse) error {
					for _, r := range l.GetRoles() {
						if r.GetName() != args[0] {
							continue
						}
						if a.json() {
							return a.printJSON(r)
						}
						if err := a.printf("Role %s\n", r.GetName()); err != nil {
							return err
						}
						for _, typ := range []kvstorev1.PermissionType{kvstorev1.PermissionType_PERMISSION_TYPE_READ, kvstorev1.PermissionType_PERMISSION_TYPE_WRITE} {
							name := map[kvstorev1.PermissionType]string{kvstorev1.PermissionType_PERMISSION_TYPE_READ: "KV Read:", kvstorev1.PermissionType_PERMISSION_TYPE_WRITE: "KV Write:"}[typ]
							if err := a.printf("%s\n", name); err != nil {
								return err
							}
							for _, p := range r.GetPermissions() {
								if p.GetType() == typ || p.GetType() == kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE {
									if err := a.printf("\t%s\n", showRange(p)); err != nil {
										return err
									}
								}
							}
						}
						return nil
					}
					return notFound("role get", "role %q not found", args[0])
				})(cmd, nil)
			}),
		},
	)
	return cmd
}

func (a *app) authCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Turn authentication on or off, or show whether it is on",
		Long: `Auth turns authentication on or off, as etcdctl auth does. Enabling needs
a user named root (kvctl user add root), who gets the root role. While it is
on, every command needs --user (or $KVCTL_USER), and disabling needs root.`,
		Example: `  kvctl user add root:secret
  kvctl auth enable
  kvctl --user root:secret auth disable`,
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "enable",
			Short: "Turn authentication on",
			Args:  cobra.NoArgs,
			RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}}, "auth enable", "Authentication Enabled")
			}),
		},
		&cobra.Command{
			Use:   "disable",
			Short: "Turn authentication off",
			Args:  cobra.NoArgs,
			RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
				return a.authChange(cmd, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Disable{Disable: &kvstorev1.AuthDisable{}}}, "auth disable", "Authentication Disabled")
			}),
		},
		&cobra.Command{
			Use:   "status",
			Short: "Show whether authentication is on",
			Args:  cobra.NoArgs,
			RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
				c, ctx, cancel, err := a.newClient(cmd.Context())
				if err != nil {
					return err
				}
				defer c.Close()
				defer cancel()
				resp, err := c.Auth.AuthStatus(ctx, connect.NewRequest(&kvstorev1.AuthStatusRequest{}))
				if err != nil {
					return fmt.Errorf("auth status: %w", err)
				}
				if a.json() {
					return a.printJSON(resp.Msg)
				}
				return a.printf("Authentication Status: %t\n", resp.Msg.GetEnabled())
			}),
		},
	)
	return cmd
}
