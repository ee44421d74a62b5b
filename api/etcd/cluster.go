package etcd

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/api/v3/version"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/snapfile"
)

// now is a header at the node's applied revision.
func (f *face) now(ctx context.Context) *pb.ResponseHeader {
	st, err := f.sv.Store.Status(ctx)
	if err != nil {
		return f.header(0)
	}
	return header(st.GetHeader())
}

// hasLeader tells whether this node knows a leader now.
func (f *face) hasLeader(ctx context.Context) bool {
	st, err := f.sv.Store.Status(ctx)
	return err == nil && st.GetLeaderId() != ""
}

// URL is how a member's address appears in etcd's member list: kvstore
// serves clients and peers on one port, over plain HTTP/2 unless TLS is on.
func URL(addr string) string { return "http://" + addr }

type clusterServer struct{ f *face }

var _ pb.ClusterServer = clusterServer{}

func (f *face) members(ctx context.Context) (*kvstorev1.MembersResponse, error) {
	resp, err := f.sv.Cluster.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
	if err != nil {
		return nil, etcdError(err)
	}
	return resp.Msg, nil
}

// memberName finds the kvstore id of the member etcd's id names.
func (f *face) memberName(ctx context.Context, id uint64) (string, error) {
	ms, err := f.members(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range ms.GetMembers() {
		if ID(m.GetId()) == id {
			return m.GetId(), nil
		}
	}
	return "", rpctypes.ErrGRPCMemberNotFound
}

func (c clusterServer) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	ms, err := c.f.members(ctx)
	if err != nil {
		return nil, err
	}
	// As etcd's, the header carries no revision: membership is not in
	// the key space.
	out := &pb.MemberListResponse{Header: header(ms.GetHeader())}
	out.Header.Revision = 0
	for _, m := range ms.GetMembers() {
		out.Members = append(out.Members, &pb.Member{
			ID:         ID(m.GetId()),
			Name:       m.GetId(),
			PeerURLs:   []string{URL(m.GetAddress())},
			ClientURLs: []string{URL(m.GetAddress())},
			IsLearner:  m.GetSuffrage() == kvstorev1.Suffrage_SUFFRAGE_NONVOTER,
		})
	}
	return out, nil
}

func (c clusterServer) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, status.Error(codes.FailedPrecondition,
		"kvstore: members join by gossip, not by MemberAdd: start kvd with --join <address of any member> and the leader adds it")
}

func (c clusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	name, err := c.f.memberName(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	resp, err := c.f.sv.Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: name}))
	if err != nil {
		return nil, etcdError(err)
	}
	list, err := c.MemberList(ctx, &pb.MemberListRequest{})
	if err != nil {
		return nil, err
	}
	return &pb.MemberRemoveResponse{Header: header(resp.Msg.GetHeader()), Members: list.Members}, nil
}

func (c clusterServer) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, status.Error(codes.FailedPrecondition,
		"kvstore: a member's address is the one it advertises: restart it with --advertise <new address> and gossip tells the others")
}

func (c clusterServer) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, status.Error(codes.FailedPrecondition,
		"kvstore: the leader promotes a non-voter by itself once it has caught up, up to --max-voters voters")
}

type maintenanceServer struct{ f *face }

var _ pb.MaintenanceServer = maintenanceServer{}

func (m maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	req := &kvstorev1.AlarmRequest{Alarm: kvstorev1.AlarmType(r.Alarm)}
	switch r.Action {
	case pb.AlarmRequest_GET:
		req.Action = kvstorev1.AlarmAction_ALARM_ACTION_LIST
	case pb.AlarmRequest_ACTIVATE:
		req.Action = kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE
	case pb.AlarmRequest_DEACTIVATE:
		req.Action = kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE
	default:
		return nil, status.Errorf(codes.InvalidArgument, "etcdserver: unknown alarm action %d", r.Action)
	}
	if req.Action != kvstorev1.AlarmAction_ALARM_ACTION_LIST && r.MemberID != 0 {
		name, err := m.f.memberName(ctx, r.MemberID)
		if err != nil {
			return nil, err
		}
		req.MemberId = name
	}
	resp, err := m.f.sv.Cluster.Alarm(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, etcdError(err)
	}
	out := &pb.AlarmResponse{Header: header(resp.Msg.GetHeader())}
	for _, a := range resp.Msg.GetAlarms() {
		out.Alarms = append(out.Alarms, &pb.AlarmMember{MemberID: ID(a.GetMemberId()), Alarm: pb.AlarmType(a.GetAlarm())})
	}
	return out, nil
}

func (m maintenanceServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	resp, err := m.f.sv.Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		return nil, etcdError(err)
	}
	st := resp.Msg
	out := &pb.StatusResponse{
		Header:           header(st.GetHeader()),
		Version:          version.Version,
		Leader:           ID(st.GetLeaderId()),
		RaftIndex:        st.GetCommitIndex(),
		RaftTerm:         st.GetTerm(),
		RaftAppliedIndex: st.GetAppliedIndex(),
	}
	if m.f.opts.DBSize != nil {
		out.DbSize = m.f.opts.DBSize()
		out.DbSizeInUse = out.DbSize
	}
	for _, a := range st.GetAlarms() {
		out.Errors = append(out.Errors, fmt.Sprintf("memberID:%d alarm:%s", ID(a.GetMemberId()), pb.AlarmType(a.GetAlarm())))
	}
	if w := st.GetWritesRefused(); w != "" {
		out.Errors = append(out.Errors, w)
	}
	if ms, err := m.f.members(ctx); err == nil {
		for _, mm := range ms.GetMembers() {
			if mm.GetId() == st.GetNodeId() {
				out.IsLearner = mm.GetSuffrage() == kvstorev1.Suffrage_SUFFRAGE_NONVOTER
			}
		}
	}
	return out, nil
}

// Defragment has nothing to do: Badger reclaims space in the background.
func (m maintenanceServer) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return &pb.DefragmentResponse{Header: m.f.now(ctx)}, nil
}

func (m maintenanceServer) hash(ctx context.Context, rev int64) (*kvstorev1.AlarmHashResponse, error) {
	resp, err := m.f.sv.Cluster.AlarmHash(ctx, connect.NewRequest(&kvstorev1.AlarmHashRequest{Revision: rev}))
	if err != nil {
		return nil, etcdError(err)
	}
	return resp.Msg, nil
}

// fold folds kvstore's 64-bit state hash into etcd's 32 bits.
func fold(h uint64) uint32 { return uint32(h) ^ uint32(h>>32) }

// Hash is HashKV at the applied revision: kvstore's hash covers the keys'
// state, not a database file.
func (m maintenanceServer) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	h, err := m.hash(ctx, 0)
	if err != nil {
		return nil, err
	}
	return &pb.HashResponse{Header: header(h.GetHeader()), Hash: fold(h.GetHash())}, nil
}

// HashKV hashes the keys at a revision, the same on every member that has
// applied it.
func (m maintenanceServer) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	h, err := m.hash(ctx, r.Revision)
	if err != nil {
		return nil, err
	}
	return &pb.HashKVResponse{Header: header(h.GetHeader()), Hash: fold(h.GetHash()), CompactRevision: h.GetCompactRevision(), HashRevision: h.GetRevision()}, nil
}

// Snapshot streams a backup as a kvstore snapshot file, the one `kvctl
// snapshot save` writes: `etcdctl snapshot save` gets a file that `kvd
// restore` takes (not an etcd bbolt file: etcdutl cannot read it).
func (m maintenanceServer) Snapshot(_ *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	if m.f.sv.Snapshot == nil {
		return unimplemented("this node does not make snapshots")
	}
	out := &blobWriter{send: stream.Send}
	fw, err := snapfile.NewWriter(out)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	var hdr *kvstorev1.SnapshotHeader
	var trailer *kvstorev1.SnapshotTrailer
	err = m.f.sv.Snapshot(stream.Context(), func(r *kvstorev1.SnapshotResponse) error {
		switch p := r.GetPart().(type) {
		case *kvstorev1.SnapshotResponse_Header:
			hdr = p.Header
			if int(hdr.GetFormat()) != snapfile.Format {
				return status.Errorf(codes.Internal, "kvstore: the state came in format %d; this node writes files of format %d", hdr.GetFormat(), snapfile.Format)
			}
		case *kvstorev1.SnapshotResponse_Chunk:
			_, err := fw.Write(p.Chunk)
			return err
		case *kvstorev1.SnapshotResponse_Trailer:
			trailer = p.Trailer
		}
		return nil
	})
	if err != nil {
		return etcdError(err)
	}
	if hdr == nil || trailer == nil {
		return status.Error(codes.Internal, "kvstore: the snapshot ended without its header or trailer")
	}
	if _, err := fw.CloseAligned(snapfile.Info{
		Revision:          hdr.GetHeader().GetRevision(),
		CompactedRevision: trailer.GetCompactedRevision(),
		Keys:              trailer.GetKeys(),
		Entries:           trailer.GetEntries(),
		ClusterID:         hdr.GetHeader().GetClusterId(),
		Member:            hdr.GetHeader().GetNodeId(),
		CreatedAt:         time.Now().UTC().Truncate(time.Second),
	}, 512); err != nil {
		return etcdError(err)
	}
	return out.flush(0)
}

// snapshotBlob is the size of the blobs of etcd's snapshot stream, as
// etcd sends them.
const snapshotBlob = 32 << 10

// blobWriter sends what is written to it as etcd snapshot blobs.
type blobWriter struct {
	send func(*pb.SnapshotResponse) error
	buf  []byte
}

func (b *blobWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(len(p), snapshotBlob-len(b.buf))
		b.buf = append(b.buf, p[:take]...)
		p = p[take:]
		if len(b.buf) == snapshotBlob {
			// More is to come: etcd's clients only show remaining_bytes.
			if err := b.flush(1); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (b *blobWriter) flush(remaining uint64) error {
	if len(b.buf) == 0 && remaining != 0 {
		return nil
	}
	err := b.send(&pb.SnapshotResponse{RemainingBytes: remaining, Blob: b.buf, Version: version.Version})
	b.buf = nil
	return err
}

func (m maintenanceServer) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	name, err := m.f.memberName(ctx, r.TargetID)
	if err != nil {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	resp, err := m.f.sv.Cluster.TransferLeadership(ctx, connect.NewRequest(&kvstorev1.TransferLeadershipRequest{Id: name}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.MoveLeaderResponse{Header: header(resp.Msg.GetHeader())}, nil
}

func (m maintenanceServer) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, unimplemented("there is no etcd cluster version to downgrade")
}
