package etcd

import (
	"context"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// authServer is etcd's Auth service over kvstore's users and roles: the
// same replicated state, the same tokens, the same checks (the handlers of
// kvstore.v1's AuthService), so etcdctl and kvctl manage one set of users.
type authServer struct {
	pb.UnimplementedAuthServer
	f *face
}

func (a authServer) change(ctx context.Context, c *kvstorev1.AuthChangeRequest) (*pb.ResponseHeader, error) {
	resp, err := a.f.sv.Auth.AuthChange(ctx, connect.NewRequest(c))
	if err != nil {
		return nil, etcdError(err)
	}
	return header(resp.Msg.GetHeader()), nil
}

func (a authServer) list(ctx context.Context) (*kvstorev1.AuthListResponse, error) {
	resp, err := a.f.sv.Auth.AuthList(ctx, connect.NewRequest(&kvstorev1.AuthListRequest{}))
	if err != nil {
		return nil, etcdError(err)
	}
	return resp.Msg, nil
}

func (a authServer) AuthStatus(ctx context.Context, _ *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	resp, err := a.f.sv.Auth.AuthStatus(ctx, connect.NewRequest(&kvstorev1.AuthStatusRequest{}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.AuthStatusResponse{Header: header(resp.Msg.GetHeader()), Enabled: resp.Msg.GetEnabled()}, nil
}

func (a authServer) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	resp, err := a.f.sv.Auth.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: r.GetName(), Password: r.GetPassword()}))
	if err == nil {
		return &pb.AuthenticateResponse{Header: header(resp.Msg.GetHeader()), Token: resp.Msg.GetToken()}, nil
	}
	switch connect.CodeOf(err) {
	case connect.CodeFailedPrecondition:
		return nil, rpctypes.ErrGRPCAuthNotEnabled
	case connect.CodeUnauthenticated:
		return nil, rpctypes.ErrGRPCAuthFailed
	}
	return nil, etcdError(err)
}

func (a authServer) AuthEnable(ctx context.Context, _ *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	resp, err := a.f.sv.Auth.AuthChange(ctx, connect.NewRequest(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}}))
	if connect.CodeOf(err) == connect.CodeFailedPrecondition {
		return nil, rpctypes.ErrGRPCRootUserNotExist
	}
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.AuthEnableResponse{Header: header(resp.Msg.GetHeader())}, nil
}

func (a authServer) AuthDisable(ctx context.Context, _ *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Disable{Disable: &kvstorev1.AuthDisable{}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthDisableResponse{Header: h}, nil
}

func (a authServer) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	if r.GetName() == "" {
		return nil, rpctypes.ErrGRPCUserEmpty
	}
	noPassword := r.GetOptions() != nil && r.GetOptions().NoPassword
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{
		Name: r.GetName(), Password: r.GetPassword(), PasswordHash: []byte(r.GetHashedPassword()), NoPassword: noPassword}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserAddResponse{Header: h}, nil
}

func (a authServer) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	l, err := a.list(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range l.GetUsers() {
		if u.GetName() == r.GetName() {
			return &pb.AuthUserGetResponse{Header: header(l.GetHeader()), Roles: u.GetRoles()}, nil
		}
	}
	return nil, rpctypes.ErrGRPCUserNotFound
}

func (a authServer) UserList(ctx context.Context, _ *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	l, err := a.list(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.AuthUserListResponse{Header: header(l.GetHeader())}
	for _, u := range l.GetUsers() {
		out.Users = append(out.Users, u.GetName())
	}
	return out, nil
}

func (a authServer) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserDelete{UserDelete: &kvstorev1.UserDelete{Name: r.GetName()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserDeleteResponse{Header: h}, nil
}

func (a authServer) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserChangePassword{UserChangePassword: &kvstorev1.UserChangePassword{
		Name: r.GetName(), Password: r.GetPassword(), PasswordHash: []byte(r.GetHashedPassword())}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserChangePasswordResponse{Header: h}, nil
}

func (a authServer) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: r.GetUser(), Role: r.GetRole()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserGrantRoleResponse{Header: h}, nil
}

func (a authServer) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserRevokeRole{UserRevokeRole: &kvstorev1.UserRevokeRole{User: r.GetName(), Role: r.GetRole()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserRevokeRoleResponse{Header: h}, nil
}

func (a authServer) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	if r.GetName() == "" {
		return nil, rpctypes.ErrGRPCRoleEmpty
	}
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: r.GetName()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleAddResponse{Header: h}, nil
}

// etcd's permission types are READ 0, WRITE 1, READWRITE 2; kvstore's are
// one more (0 is unspecified).
func toPermType(t authpb.Permission_Type) kvstorev1.PermissionType {
	return kvstorev1.PermissionType(t + 1)
}

func fromPermType(t kvstorev1.PermissionType) authpb.Permission_Type {
	return authpb.Permission_Type(t - 1)
}

func (a authServer) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	l, err := a.list(ctx)
	if err != nil {
		return nil, err
	}
	for _, role := range l.GetRoles() {
		if role.GetName() != r.GetRole() {
			continue
		}
		out := &pb.AuthRoleGetResponse{Header: header(l.GetHeader())}
		for _, p := range role.GetPermissions() {
			out.Perm = append(out.Perm, &authpb.Permission{PermType: fromPermType(p.GetType()), Key: p.GetKey(), RangeEnd: p.GetRangeEnd()})
		}
		return out, nil
	}
	return nil, rpctypes.ErrGRPCRoleNotFound
}

func (a authServer) RoleList(ctx context.Context, _ *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	l, err := a.list(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.AuthRoleListResponse{Header: header(l.GetHeader())}
	for _, r := range l.GetRoles() {
		out.Roles = append(out.Roles, r.GetName())
	}
	return out, nil
}

func (a authServer) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleDelete{RoleDelete: &kvstorev1.RoleDelete{Name: r.GetRole()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleDeleteResponse{Header: h}, nil
}

func (a authServer) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	if r.GetPerm() == nil {
		return nil, rpctypes.ErrGRPCPermissionNotGiven
	}
	p := r.GetPerm()
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{
		Role: r.GetName(), Permission: &kvstorev1.Permission{Type: toPermType(p.PermType), Key: p.Key, RangeEnd: p.RangeEnd}}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleGrantPermissionResponse{Header: h}, nil
}

func (a authServer) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	h, err := a.change(ctx, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleRevokePermission{RoleRevokePermission: &kvstorev1.RoleRevokePermission{
		Role: r.GetRole(), Key: r.GetKey(), RangeEnd: r.GetRangeEnd()}}})
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleRevokePermissionResponse{Header: h}, nil
}
