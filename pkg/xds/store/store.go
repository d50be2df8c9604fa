package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/internal/jsonstr"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
)

// Format identifies the file format.
const Format = "meshlet.xds.persisted/v1"

// MaxFileSize bounds the file Load reads.
const MaxFileSize = 1 << 30

// ErrCorrupt marks a persisted file that cannot be used.
var ErrCorrupt = errors.New("persisted xDS state is corrupt")

type fileDoc struct {
	Format string          `json:"format"`
	SHA256 string          `json:"sha256"`
	Body   json.RawMessage `json:"body"`
}

type body struct {
	bodyHead
	Resources []resource `json:"resources"`
}

// bodyHead is the body without its resources: EncodeTo writes it first and
// streams the resources after it.
type bodyHead struct {
	Saved      time.Time         `json:"saved"`
	SetVersion string            `json:"set_version"`
	Versions   map[string]string `json:"versions"`
}

type resource struct {
	TypeURL     string    `json:"type_url"`
	Name        string    `json:"name"`
	Version     string    `json:"version,omitempty"`
	LastUpdated time.Time `json:"last_updated,omitzero"`
	Value       []byte    `json:"value"` // binary protobuf, base64 in JSON
}

// Store is a file-backed xds.Persister.
type Store struct {
	path string
	log  *zap.Logger
}

// New returns a store at path; the directory must exist or be creatable.
func New(path string, log *zap.Logger) (*Store, error) {
	if path == "" {
		return nil, errors.New("xds store: empty path")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("xds store: create directory: %w", err)
	}
	return &Store{path: path, log: log}, nil
}

// Path is the file the store writes.
func (s *Store) Path() string { return s.path }

// Encode serialises p (EncodeTo into memory).
func Encode(p *xds.Persisted) ([]byte, error) {
	var buf bytes.Buffer
	if err := EncodeTo(&buf, p); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// EncodeTo writes p to w as one JSON document, resource by resource, so
// that a large state is never held twice in memory: only one resource's
// serialised form exists at a time. The document is
// {"format":…,"body":{…},"sha256":…}, the checksum covering the body's
// bytes exactly as written (it follows the body because it is computed
// while the body streams out).
func EncodeTo(w io.Writer, p *xds.Persisted) error {
	if p == nil || p.Set == nil {
		return errors.New("xds store: nothing to encode")
	}
	ew := &errWriter{w: w}
	head, err := json.Marshal(Format)
	if err != nil {
		return fmt.Errorf("xds store: encode: %w", err)
	}
	ew.write([]byte(`{"format":`))
	ew.write(head)
	ew.write([]byte(`,"body":`))

	h := sha256.New()
	bw := &errWriter{w: io.MultiWriter(ew, h)}
	meta, err := json.Marshal(bodyHead{Saved: p.Saved.UTC(), SetVersion: p.Set.Version, Versions: p.Versions})
	if err != nil {
		return fmt.Errorf("xds store: encode: %w", err)
	}
	bw.write(meta[:len(meta)-1]) // reopened to append the resources
	bw.write([]byte(`,"resources":[`))
	// Each resource is written field by field into a reused buffer: saving a large state makes almost no
	// garbage (in a garbage-collected heap, garbage is what raises the
	// peak), only the serialised form of one resource at a time.
	first := true
	var scratch, tmp []byte
	add := func(typeURL, name string, m any) error {
		v, err := xds.AppendWire(scratch[:0], m)
		if err != nil {
			return fmt.Errorf("xds store: marshal %s %q: %w", xds.ShortType(typeURL), name, err)
		}
		scratch = v
		meta := p.Meta[typeURL][name]
		tmp = tmp[:0]
		if !first {
			tmp = append(tmp, ',')
		}
		first = false
		tmp = append(tmp, `{"type_url":`...)
		tmp = jsonstr.Append(tmp, typeURL)
		tmp = append(tmp, `,"name":`...)
		tmp = jsonstr.Append(tmp, name)
		if meta.Version != "" {
			tmp = append(tmp, `,"version":`...)
			tmp = jsonstr.Append(tmp, meta.Version)
		}
		if !meta.LastUpdated.IsZero() {
			tmp = append(tmp, `,"last_updated":"`...)
			tmp = meta.LastUpdated.UTC().AppendFormat(tmp, time.RFC3339Nano)
			tmp = append(tmp, '"')
		}
		tmp = append(tmp, `,"value":"`...)
		tmp = base64.StdEncoding.AppendEncode(tmp, v)
		tmp = append(tmp, `"}`...)
		bw.write(tmp)
		return bw.err
	}
	if err := addAll(p.Set.Clusters, xds.ClusterType, add); err != nil {
		return err
	}
	if err := addAll(p.Set.Endpoints, xds.EndpointType, add); err != nil {
		return err
	}
	if err := addAll(p.Set.Listeners, xds.ListenerType, add); err != nil {
		return err
	}
	if err := addAll(p.Set.Routes, xds.RouteType, add); err != nil {
		return err
	}
	bw.write([]byte(`]}`))
	ew.write([]byte(`,"sha256":"` + hex.EncodeToString(h.Sum(nil)) + `"}`))
	if ew.err != nil {
		return fmt.Errorf("xds store: write: %w", ew.err)
	}
	return nil
}

// addAll calls add for every resource of m in name order.
func addAll[T any](m map[string]T, typeURL string, add func(typeURL, name string, m any) error) error {
	for _, n := range slices.Sorted(maps.Keys(m)) {
		if err := add(typeURL, n, m[n]); err != nil {
			return err
		}
	}
	return nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// errWriter remembers the first write error and skips writes after it.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) write(p []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(p)
	}
}

func (e *errWriter) Write(p []byte) (int, error) {
	e.write(p)
	if e.err != nil {
		return 0, e.err
	}
	return len(p), nil
}

// Decode parses a persisted file. Every failure wraps ErrCorrupt.
func Decode(data []byte) (*xds.Persisted, error) {
	var doc fileDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: not JSON: %v", ErrCorrupt, err)
	}
	if doc.Format != Format {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrCorrupt, doc.Format, Format)
	}
	sum := sha256.Sum256(doc.Body)
	if hex.EncodeToString(sum[:]) != doc.SHA256 {
		return nil, fmt.Errorf("%w: checksum mismatch (file truncated or edited)", ErrCorrupt)
	}
	var b body
	if err := json.Unmarshal(doc.Body, &b); err != nil {
		return nil, fmt.Errorf("%w: body: %v", ErrCorrupt, err)
	}
	p := &xds.Persisted{Set: resources.New(), Versions: b.Versions, Meta: map[string]map[string]xds.ResourceMeta{}, Saved: b.Saved}
	p.Set.Version = b.SetVersion
	if p.Versions == nil {
		p.Versions = map[string]string{}
	}
	for i, r := range b.Resources {
		fail := func(err error) error {
			return fmt.Errorf("%w: resources[%d] (%s %q): %v", ErrCorrupt, i, r.TypeURL, r.Name, err)
		}
		if r.Name == "" {
			return nil, fail(errors.New("no name"))
		}
		var name string
		switch r.TypeURL {
		case xds.ClusterType:
			c := &clusterv3.Cluster{}
			if err := proto.Unmarshal(r.Value, c); err != nil {
				return nil, fail(err)
			}
			name = c.GetName()
			if err := put(p.Set.Clusters, r.Name, c); err != nil {
				return nil, fail(err)
			}
		case xds.EndpointType:
			la, err := resources.DecodeAssignment(r.Value)
			if err != nil {
				return nil, fail(err)
			}
			name = r.Name // inline assignments may be keyed by cluster name
			if err := put(p.Set.Endpoints, r.Name, la); err != nil {
				return nil, fail(err)
			}
		case xds.ListenerType:
			l := &listenerv3.Listener{}
			if err := proto.Unmarshal(r.Value, l); err != nil {
				return nil, fail(err)
			}
			name = l.GetName()
			if err := put(p.Set.Listeners, r.Name, l); err != nil {
				return nil, fail(err)
			}
		case xds.RouteType:
			rc := &routev3.RouteConfiguration{}
			if err := proto.Unmarshal(r.Value, rc); err != nil {
				return nil, fail(err)
			}
			name = rc.GetName()
			if err := put(p.Set.Routes, r.Name, rc); err != nil {
				return nil, fail(err)
			}
		default:
			return nil, fail(errors.New("unknown resource type"))
		}
		if name != r.Name {
			return nil, fail(fmt.Errorf("resource body is named %q", name))
		}
		if p.Meta[r.TypeURL] == nil {
			p.Meta[r.TypeURL] = map[string]xds.ResourceMeta{}
		}
		p.Meta[r.TypeURL][r.Name] = xds.ResourceMeta{Version: r.Version, LastUpdated: r.LastUpdated}
	}
	return p, nil
}

func put[T any](m map[string]T, name string, v T) error {
	if _, dup := m[name]; dup {
		return errors.New("appears twice")
	}
	m[name] = v
	return nil
}

// Save writes p atomically: temporary file in the same directory, fsync,
// rename over the old file, fsync of the directory.
func (s *Store) Save(ctx context.Context, p *xds.Persisted) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("xds store: create temporary file: %w", err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	cw := &countWriter{w: bufio.NewWriterSize(tmp, 256<<10)}
	if err := EncodeTo(cw, p); err != nil {
		return fmt.Errorf("xds store: %s: %w", tmpName, err)
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return fmt.Errorf("xds store: write %s: %w", tmpName, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("xds store: fsync %s: %w", tmpName, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("xds store: close %s: %w", tmpName, err)
	}
	if err := os.Rename(tmpName, s.path); err != nil {
		return fmt.Errorf("xds store: rename into %s: %w", s.path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	s.log.Debug("persisted xds state", zap.String("path", s.path), zap.Int64("bytes", cw.n), zap.String("version", p.Set.Version))
	return nil
}

// Load reads the persisted state: (nil, nil) if there is none. A corrupt
// file is renamed to <path>.corrupt-<UTC time> and an error wrapping
// ErrCorrupt is returned.
func (s *Store) Load(ctx context.Context) (*xds.Persisted, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := os.Stat(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("xds store: %w", err)
	}
	var p *xds.Persisted
	if st.Size() > MaxFileSize {
		err = fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrCorrupt, st.Size(), MaxFileSize)
	} else {
		var data []byte
		data, err = os.ReadFile(s.path)
		if err != nil {
			return nil, fmt.Errorf("xds store: read %s: %w", s.path, err)
		}
		p, err = Decode(data)
	}
	if err != nil {
		aside := s.path + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000Z")
		if rerr := os.Rename(s.path, aside); rerr != nil {
			return nil, fmt.Errorf("xds store: %s: %w; moving it aside failed: %v", s.path, err, rerr)
		}
		s.log.Error("persisted xds state is unusable; moved aside", zap.String("path", s.path), zap.String("moved_to", aside), zap.Error(err))
		return nil, fmt.Errorf("xds store: %s (moved to %s): %w", s.path, aside, err)
	}
	return p, nil
}
