package jsonstr

import (
	"encoding/json"
	"testing"
)

// Append writes strings that JSON decodes back unchanged (invalid
// UTF-8 becomes U+FFFD, as with encoding/json).
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "outbound|80||a.b.svc.cluster.local", "q\"b\\s\n\r\t\x00\x1f", "ünï", "\xff\xfe", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var got, want string
		if err := json.Unmarshal(Append(nil, s), &got); err != nil {
			t.Fatalf("%q: not a JSON string: %v", s, err)
		}
		ref, _ := json.Marshal(s)
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q decodes to %q, encoding/json's to %q", s, got, want)
		}
	})
}
