import { describe, expect, it } from "vitest";
import {
  ddisaName,
  emailDomain,
  isLoopbackHost,
  type ParsedRecord,
  parseDdisaRecord,
  selectDdisaRecord,
} from "../../protocol/ddisa.ts";

const ok = (p: ParsedRecord) => {
  if (!p.ok) throw new Error(`expected a valid record, got: ${p.error}`);
  return p;
};
const err = (p: ParsedRecord) => {
  if (p.ok) throw new Error("expected an invalid record");
  return p;
};

describe("parseDdisaRecord: syntax", () => {
  it("parses the example from the protocol", () => {
    const p = ok(
      parseDdisaRecord(
        "v=ddisa1 idp=https://id.example.com; mode=open; priority=10; policy_endpoint=https://id.example.com/policy",
      ),
    );
    expect(p.record).toEqual({
      version: "ddisa1",
      idp: "https://id.example.com",
      mode: "open",
      priority: 10,
      policy_endpoint: "https://id.example.com/policy",
    });
    expect(p.ignoredKeys).toEqual([]);
  });

  it("defaults priority to 10 and leaves mode unset", () => {
    const p = ok(parseDdisaRecord("v=ddisa1 idp=https://id.example.com"));
    expect(p.record.priority).toBe(10);
    expect(p.record.mode).toBeUndefined();
  });

  it("ignores whitespace around fields, keys and values, and empty segments", () => {
    const p = ok(
      parseDdisaRecord("  v=ddisa1\t idp = https://id.example.com ;  mode= deny ;; priority =3 ;  "),
    );
    expect(p.record).toMatchObject({ idp: "https://id.example.com", mode: "deny", priority: 3 });
  });

  it("accepts a semicolon right after the version token", () => {
    expect(ok(parseDdisaRecord("v=ddisa1;idp=https://id.example.com")).record.idp).toBe(
      "https://id.example.com",
    );
  });

  it("strips a trailing slash from the idp", () => {
    expect(ok(parseDdisaRecord("v=ddisa1 idp=https://id.example.com/")).record.idp).toBe(
      "https://id.example.com",
    );
  });

  it("ignores unknown keys but reports them", () => {
    const p = ok(parseDdisaRecord("v=ddisa1 idp=https://id.example.com; future=1"));
    expect(p.ignoredKeys).toEqual(["future"]);
  });

  it("lower-cases keys", () => {
    expect(ok(parseDdisaRecord("v=ddisa1 IDP=https://id.example.com; Mode=open")).record.mode).toBe("open");
  });
});

describe("parseDdisaRecord: version token", () => {
  it("ignores records that are not DDISA at all", () => {
    for (const raw of ["v=spf1 -all", "google-site-verification=abc", "", "idp=https://id.example.com"]) {
      const p = err(parseDdisaRecord(raw));
      expect(p.ignored).toBe(true);
    }
  });

  it("ignores other DDISA versions, with the reason", () => {
    const p = err(parseDdisaRecord("v=ddisa2 idp=https://id.example.com"));
    expect(p.ignored).toBe(true);
    expect(p.error).toContain('unsupported DDISA version "ddisa2"');
  });

  it("requires v=ddisa1 to be the first token", () => {
    expect(err(parseDdisaRecord("idp=https://id.example.com v=ddisa1")).ignored).toBe(true);
    expect(err(parseDdisaRecord("v=ddisa1idp=https://id.example.com")).ignored).toBe(true);
  });
});

describe("parseDdisaRecord: invalid records", () => {
  const invalid: [string, string][] = [
    ["v=ddisa1", "no idp field"],
    ["v=ddisa1 mode=open; priority=1", "no idp field"],
    ["v=ddisa1 idp=https://a.example; idp=https://b.example", 'duplicate field "idp"'],
    ["v=ddisa1 idp=https://a.example; x=1; x=2", 'duplicate field "x"'],
    ["v=ddisa1 idp=https://a.example; mode", 'malformed field "mode"'],
    ["v=ddisa1 idp=https://a.example; =open", 'malformed field "=open"'],
    ["v=ddisa1 idp=https://a.example; mode=", 'empty value for "mode"'],
    ["v=ddisa1 idp=https://a.example; mo de=open", "malformed field name"],
    ["v=ddisa1 idp=https://a.example; mode=closed", 'invalid mode "closed"'],
    ["v=ddisa1 idp=https://a.example; mode=OPEN", 'invalid mode "OPEN"'],
    ["v=ddisa1 idp=https://a.example; priority=-1", 'invalid priority "-1"'],
    ["v=ddisa1 idp=https://a.example; priority=1.5", 'invalid priority "1.5"'],
    ["v=ddisa1 idp=https://a.example; priority=ten", 'invalid priority "ten"'],
    ["v=ddisa1 idp=https://a.example; priority=9999999999", "invalid priority"],
    ["v=ddisa1 idp=id.example.com", "is not a URL"],
    ["v=ddisa1 idp=http://id.example.com", "must use https"],
    ["v=ddisa1 idp=ftp://id.example.com", "must use https"],
    ["v=ddisa1 idp=https://user:pw@id.example.com", "must not contain credentials"],
    ["v=ddisa1 idp=https://id.example.com/?x=1", "must not have a query or fragment"],
    ["v=ddisa1 idp=https://id.example.com/#f", "must not have a query or fragment"],
    ["v=ddisa1 idp=https://a.example; policy_endpoint=http://evil.example/p", "policy_endpoint"],
  ];
  it.each(invalid)("rejects %j (%s)", (raw, why) => {
    const p = err(parseDdisaRecord(raw));
    expect(p.ignored).toBe(false);
    expect(p.error).toContain(why);
  });
});

describe("parseDdisaRecord: https only, loopback http when allowed", () => {
  const loopback = [
    "http://127.0.0.1:8080",
    "http://localhost:3000",
    "http://[::1]:9000",
    "http://127.1.2.3",
  ];
  it.each(loopback)("refuses %s by default", (idp) => {
    expect(err(parseDdisaRecord(`v=ddisa1 idp=${idp}`)).error).toContain("plain http");
  });
  it.each(loopback)("accepts %s with allowLoopbackHttp", (idp) => {
    expect(parseDdisaRecord(`v=ddisa1 idp=${idp}`, { allowLoopbackHttp: true }).ok).toBe(true);
  });
  it("never accepts plain http to a non-loopback host, even when allowed", () => {
    for (const idp of [
      "http://10.0.0.1",
      "http://id.example.com",
      "http://127.0.0.1.nip.io",
      "http://[::2]",
    ]) {
      expect(parseDdisaRecord(`v=ddisa1 idp=${idp}`, { allowLoopbackHttp: true }).ok).toBe(false);
    }
  });
  it("isLoopbackHost", () => {
    expect(isLoopbackHost("127.0.0.1")).toBe(true);
    expect(isLoopbackHost("[::1]")).toBe(true);
    expect(isLoopbackHost("LOCALHOST")).toBe(true);
    expect(isLoopbackHost("128.0.0.1")).toBe(false);
    expect(isLoopbackHost("localhost.example.com")).toBe(false);
  });
});

describe("selectDdisaRecord", () => {
  it("chooses the lowest priority, whatever the answer order", () => {
    const records = [
      "v=ddisa1 idp=https://b.example; priority=20",
      "v=ddisa1 idp=https://a.example; priority=5",
      "v=ddisa1 idp=https://c.example",
    ];
    for (const order of [records, [...records].reverse()]) {
      const s = selectDdisaRecord(order);
      expect(s.selected?.idp).toBe("https://a.example");
      expect(s.explanation.at(-1)).toContain("lowest of 3 valid records");
    }
  });

  it("breaks a priority tie deterministically and says so", () => {
    const a = "v=ddisa1 idp=https://a.example; priority=1";
    const b = "v=ddisa1 idp=https://b.example; priority=1";
    expect(selectDdisaRecord([b, a]).selected?.idp).toBe("https://a.example");
    expect(selectDdisaRecord([a, b]).selected?.idp).toBe("https://a.example");
    expect(selectDdisaRecord([b, a]).explanation.join("\n")).toContain("priority tie at 1");
    // Same IdP, different mode: still independent of order.
    const open = "v=ddisa1 idp=https://a.example; mode=open";
    const deny = "v=ddisa1 idp=https://a.example; mode=deny";
    expect(selectDdisaRecord([open, deny]).selected?.mode).toBe(
      selectDdisaRecord([deny, open]).selected?.mode,
    );
  });

  it("skips invalid records, ignores non-DDISA ones and explains both", () => {
    const s = selectDdisaRecord([
      "v=spf1 -all",
      "v=ddisa1 mode=open; priority=0",
      "v=ddisa1 idp=http://evil.example; priority=0",
      "v=ddisa1 idp=https://good.example; priority=50",
    ]);
    expect(s.selected?.idp).toBe("https://good.example");
    const text = s.explanation.join("\n");
    expect(text).toContain('ignored "v=spf1 -all"');
    expect(text).toContain("no idp field");
    expect(text).toContain("must use https");
    expect(s.parsed).toHaveLength(4);
  });

  it("drops exact duplicates", () => {
    const r = "v=ddisa1 idp=https://a.example; priority=1";
    const s = selectDdisaRecord([r, `${r} `, "v=ddisa1 idp=https://a.example/; priority=1"]);
    expect(s.selected?.idp).toBe("https://a.example");
    expect(s.explanation.filter((e) => e.startsWith("duplicate record ignored"))).toHaveLength(2);
    expect(s.explanation.at(-1)).toContain("only valid record");
  });

  it("has no winner without valid records", () => {
    expect(selectDdisaRecord([]).selected).toBeUndefined();
    expect(selectDdisaRecord([]).explanation).toEqual(["no TXT records found"]);
    const s = selectDdisaRecord(["v=ddisa1 mode=open", "hello"]);
    expect(s.selected).toBeUndefined();
    expect(s.explanation.at(-1)).toBe("no valid DDISA record found");
  });

  it("applies the loopback option to every record", () => {
    const r = ["v=ddisa1 idp=http://127.0.0.1:4000"];
    expect(selectDdisaRecord(r).selected).toBeUndefined();
    expect(selectDdisaRecord(r, { allowLoopbackHttp: true }).selected?.idp).toBe("http://127.0.0.1:4000");
  });
});

describe("emailDomain and ddisaName", () => {
  it("takes the lower-cased domain after the last @", () => {
    expect(emailDomain("Alice@Example.COM")).toBe("example.com");
    expect(emailDomain('"a@b"@example.com')).toBe("example.com");
    expect(emailDomain("a@example.com.")).toBe("example.com");
    expect(ddisaName("example.com")).toBe("_ddisa.example.com");
  });
  it.each(["alice", "@example.com", "alice@", "a@exa mple.com", "a@-x.com", "a@x..com", "a@_x.com", "a@x/y"])(
    "rejects %j",
    (email) => {
      expect(() => emailDomain(email)).toThrow();
    },
  );
});
