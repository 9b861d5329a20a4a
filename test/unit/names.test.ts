import { describe, expect, it } from "vitest";
import { canonicalIdentity, normalizeIdentity } from "../../protocol/names.ts";

const refused = (value: unknown) => {
  const r = normalizeIdentity(value);
  return r.ok ? `accepted as ${r.identity}` : r.reason;
};

describe("identity normalisation (protocol/names.ts)", () => {
  it("accepts email-shaped identities and lower-cases them", () => {
    expect(canonicalIdentity("a@example.com")).toBe("a@example.com");
    expect(canonicalIdentity("a+agent@example.com")).toBe("a+agent@example.com");
    expect(canonicalIdentity("Alice@Example.COM")).toBe("alice@example.com");
    expect(canonicalIdentity("bot@x")).toBe("bot@x");
    expect(canonicalIdentity("ÉLODIE@example.com")).toBe("élodie@example.com");
    expect(canonicalIdentity("用户@example.com")).toBe("用户@example.com");
    expect(canonicalIdentity("yamada太郎たろう@example.jp")).toBe("yamada太郎たろう@example.jp");
    expect(canonicalIdentity("иван@example.ru")).toBe("иван@example.ru");
    expect(canonicalIdentity("a@xn--caf-dma.example")).toBe("a@xn--caf-dma.example");
  });

  it("café in its two normal forms is one identity", () => {
    const nfc = "caf\u00e9@example.com";
    const nfd = "cafe\u0301@example.com";
    expect(nfc).not.toBe(nfd);
    expect(canonicalIdentity(nfd)).toBe(nfc);
    expect(canonicalIdentity(nfc)).toBe(nfc);
    expect(canonicalIdentity("CAFE\u0301@EXAMPLE.COM")).toBe(nfc);
  });

  it("refuses bidi, control and invisible characters", () => {
    expect(refused("alice@example.com\u202e")).toMatch(/bidi/);
    expect(refused("\u202emoc.elpmaxe@ecila")).toMatch(/bidi/);
    expect(refused("al\u200dice@example.com")).toMatch(/invisible/);
    expect(refused("alice@example.com\x1b[2K")).toMatch(/control/);
    expect(refused("alice\n@example.com")).toMatch(/control/);
  });

  it("refuses look-alikes: dotless i, mixed scripts, compatibility characters", () => {
    expect(refused("al\u0131ce@example.com")).toMatch(/dotless/); // ı
    expect(refused("AL\u0130CE@example.com")).toMatch(/dotted I/); // İ
    expect(refused("p\u0430ypal@example.com")).toMatch(/scripts in the local part/); // Cyrillic а
    expect(refused("\u03bfscar@example.com")).toMatch(/scripts in the local part/); // Greek ο
    expect(refused("\uff41lice@example.com")).toMatch(/compatibility/); // fullwidth ａ
    expect(refused("\ufb01le@example.com")).toMatch(/compatibility/); // ﬁ ligature
    // xn--pypal-4ve is "pаypal" with a Cyrillic а: the domain's Unicode form is checked too.
    expect(refused("a@xn--pypal-4ve.com")).toMatch(/scripts in a domain label/);
    expect(refused("a@xn--zz.example")).toMatch(/xn--/);
  });

  it("refuses what is not an email address", () => {
    for (const bad of ["a", "a@", "@b", "a b@c", "a@b..c", "a@-x.com", "a@x/y", "a@café.example", 5, null]) {
      expect(normalizeIdentity(bad).ok, String(bad)).toBe(false);
    }
    expect(
      normalizeIdentity(`${"a".repeat(64)}@${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(63)}.com`).ok,
    ).toBe(false);
    expect(normalizeIdentity(`${"a".repeat(65)}@example.com`).ok).toBe(false);
  });

  it("is idempotent", () => {
    for (const v of ["Alice@Example.COM", "cafe\u0301@example.com", "用户@example.com", "a+agent@x"]) {
      const once = canonicalIdentity(v)!;
      expect(canonicalIdentity(once)).toBe(once);
    }
  });
});
