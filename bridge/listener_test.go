package bridge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func envelope(serial int, name, payload string) string {
	return fmt.Sprintf("ver:3.0 server:supervisor serial:%d pool:hb poolserial:%d eventname:%s len:%d\n%s",
		serial, serial, name, len(payload), payload)
}

func TestListen(t *testing.T) {
	in := envelope(1, "PROCESS_STATE_STARTING", "processname:web groupname:web from_state:STOPPED tries:0") +
		envelope(2, "PROCESS_STATE_EXITED", "processname:w1 groupname:pool from_state:RUNNING expected:0 pid:4242") +
		envelope(3, "TICK_5", "when:1700000000")
	var out strings.Builder
	var got []ListenerEvent
	err := Listen(strings.NewReader(in), &out, func(ev ListenerEvent) error {
		got = append(got, ev)
		if ev.Name == "TICK_5" {
			return errors.New("no")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\nRESULT 4\nFAILREADY\n"; out.String() != want {
		t.Fatalf("wrote %q, want %q", out.String(), want)
	}
	if len(got) != 3 {
		t.Fatalf("%d events, want 3", len(got))
	}
	if got[0].State() != "STARTING" || got[0].ProcessName() != "web:web" || got[0].Payload["tries"] != "0" {
		t.Errorf("event 1 = %+v", got[0])
	}
	if got[1].State() != "EXITED" || got[1].ProcessName() != "pool:w1" || got[1].Payload["pid"] != "4242" {
		t.Errorf("event 2 = %+v", got[1])
	}
	if got[2].State() != "" || got[2].Header["serial"] != "3" {
		t.Errorf("event 3 = %+v", got[2])
	}
}

func TestReadListenerEventErrors(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"ver:3.0 eventname:X len:abc\n", "bad len"},
		{"ver:3.0 eventname:X\n", "bad len"},
		{"ver:3.0 len:3\nabc", "no eventname"},
		{"ver:3.0 eventname:X len:10\nabc", "payload of 10 bytes"},
		{"ver:3.0 eventname:X len:99999999\n", "bad len"},
	} {
		_, err := ReadListenerEvent(bufio.NewReader(strings.NewReader(tc.in)))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: err = %v, want %q", tc.in, err, tc.err)
		}
	}
	if _, err := ReadListenerEvent(bufio.NewReader(strings.NewReader(""))); err != io.EOF {
		t.Errorf("empty input: %v, want EOF", err)
	}
}

func TestDecodeResponse(t *testing.T) {
	info := `<?xml version='1.0'?><methodResponse><params><param><value><struct>
<member><name>name</name><value><string>web</string></value></member>
<member><name>group</name><value><string>web</string></value></member>
<member><name>pid</name><value><int>4242</int></value></member>
<member><name>state</name><value><int>20</int></value></member>
<member><name>statename</name><value><string>RUNNING</string></value></member>
<member><name>description</name><value>pid 4242, uptime 0:00:01</value></member>
<member><name>exitstatus</name><value><i4>0</i4></value></member>
</struct></value></param></params></methodResponse>`
	v, err := DecodeResponse([]byte(info))
	if err != nil {
		t.Fatal(err)
	}
	p := processInfo(v.(map[string]any))
	want := ProcessInfo{Name: "web", Group: "web", State: 20, StateName: "RUNNING", PID: 4242, Description: "pid 4242, uptime 0:00:01"}
	if p != want {
		t.Fatalf("got %+v, want %+v", p, want)
	}
	arr := `<methodResponse><params><param><value><array><data><value><boolean>1</boolean></value><value><int>7</int></value></data></array></value></param></params></methodResponse>`
	if v, err := DecodeResponse([]byte(arr)); err != nil || fmt.Sprint(v) != "[true 7]" {
		t.Fatalf("array: %v, %v", v, err)
	}
	fault := `<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>10</int></value></member><member><name>faultString</name><value><string>BAD_NAME: nope</string></value></member></struct></value></fault></methodResponse>`
	_, err = DecodeResponse([]byte(fault))
	var f *Fault
	if !errors.As(err, &f) || f.Code != FaultBadName || f.String != "BAD_NAME: nope" {
		t.Fatalf("fault: %v", err)
	}
	if _, err := DecodeResponse([]byte("<methodResponse><params>")); err == nil {
		t.Fatal("truncated response accepted")
	}
}

func TestListenerNames(t *testing.T) {
	for cmd, want := range map[string]bool{
		"/usr/local/bin/hbd supervisord-listener --socket /run/hb/supervisord.sock": true,
		`/bin/sh -c "exec sleep 1" supervisord-listener`:                            true,
		"/usr/bin/my-supervisord-listener":                                          false,
		"/bin/sleep 1000":                                                           false,
	} {
		if IsListenerCommand(cmd) != want {
			t.Errorf("IsListenerCommand(%q) = %v", cmd, !want)
		}
	}
	for ev, want := range map[string]bool{
		"PROCESS_STATE_STARTING": true, "PROCESS_GROUP_ADDED": true, "PROCESS_GROUP_REMOVED": true,
		"TICK_5": false, "PROCESS_LOG_STDOUT": false, "PROCESS_GROUP": false,
	} {
		if Relayed(ev) != want {
			t.Errorf("Relayed(%q) = %v", ev, !want)
		}
	}
}
