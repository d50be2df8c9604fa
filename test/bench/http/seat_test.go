package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParseSeat(t *testing.T) {
	for _, tc := range []struct {
		spec  string
		want  meshletSeat
		error string
	}{
		{spec: "2@0-1", want: meshletSeat{name: "meshlet P=2 cpus=0-1", procs: 2, cpus: "0-1"}},
		{spec: "0@0,2", want: meshletSeat{name: "meshlet P=unset cpus=0,2", cpus: "0,2"}},
		{spec: "1@0:GOGC=400:GODEBUG=a=1", want: meshletSeat{name: "meshlet P=1 cpus=0 GOGC=400 GODEBUG=a=1", procs: 1, cpus: "0", env: []string{"GOGC=400", "GODEBUG=a=1"}}},
		{spec: "2", error: "want PROCS@CPUS"},
		{spec: "x@0", error: "not a non-negative integer"},
		{spec: "-1@0", error: "not a non-negative integer"},
		{spec: "2@", error: "not a CPU list"},
		{spec: "2@0-", error: "not a CPU list"},
		{spec: "2@0:GOGC", error: "not KEY=VALUE"},
		{spec: "2@0:=1", error: "not KEY=VALUE"},
	} {
		got, err := parseSeat(tc.spec)
		if tc.error != "" {
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Errorf("parseSeat(%q) error = %v, want containing %q", tc.spec, err, tc.error)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseSeat(%q): %v", tc.spec, err)
			continue
		}
		if got.name != tc.want.name || got.procs != tc.want.procs || got.cpus != tc.want.cpus || !slices.Equal(got.env, tc.want.env) {
			t.Errorf("parseSeat(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
		if !strings.HasPrefix(got.name, "meshlet ") {
			t.Errorf("parseSeat(%q) name %q: first word must be meshlet for -targets", tc.spec, got.name)
		}
	}
}

func TestSeatEnviron(t *testing.T) {
	s, err := parseSeat("2@0-1:GOGC=400")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.environ(), []string{"GOGC=400", "GOMAXPROCS=2"}; !slices.Equal(got, want) {
		t.Errorf("environ = %v, want %v", got, want)
	}
	s, _ = parseSeat("0@0")
	if got := s.environ(); len(got) != 0 {
		t.Errorf("PROCS 0 environ = %v, want GOMAXPROCS unset", got)
	}
}

func TestParseSeatsRejectsDuplicates(t *testing.T) {
	if _, err := parseSeats("2@0-1 1@0 2@0-1"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate variant: error = %v", err)
	}
	seats, err := parseSeats("  2@0-1\t1@0 ")
	if err != nil || len(seats) != 2 {
		t.Errorf("parseSeats = %v, %v; want 2 seats", seats, err)
	}
}

func TestParsePerfStat(t *testing.T) {
	out := "\n" +
		"1234,,raw_syscalls:sys_enter,3579927,100.00,,\n" +
		"17,,syscalls:sys_enter_futex,3579927,100.00,,\n" +
		"<not counted>,,cpu-migrations,0,100.00,,\n" +
		"5,,context-switches,3579927,100.00,,\n" +
		"garbage line\n"
	got := parsePerfStat(out)
	want := map[string]float64{"raw_syscalls:sys_enter": 1234, "syscalls:sys_enter_futex": 17, "context-switches": 5}
	if len(got) != len(want) {
		t.Fatalf("parsePerfStat = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func FuzzParseSeat(f *testing.F) {
	for _, s := range []string{"2@0-1", "0@0,2", "1@0:GOGC=400", "2", "@", "1@0::", "9@0-1,3-4:A=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := parseSeat(spec)
		if err != nil {
			return
		}
		if s.procs < 0 || !reCPUList.MatchString(s.cpus) || !strings.HasPrefix(s.name, "meshlet ") {
			t.Fatalf("parseSeat(%q) accepted an invalid seat %+v", spec, s)
		}
		for _, kv := range s.env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				t.Fatalf("parseSeat(%q) accepted env %q", spec, kv)
			}
		}
	})
}

func FuzzParsePerfStat(f *testing.F) {
	f.Add("1234,,raw_syscalls:sys_enter,3579927,100.00,,\n<not counted>,,x,0,0,,\n")
	f.Add(",,,\n1,,\n")
	f.Fuzz(func(t *testing.T, out string) {
		for k := range parsePerfStat(out) {
			if k == "" {
				t.Fatalf("parsePerfStat(%q) returned an empty event name", out)
			}
		}
	})
}
