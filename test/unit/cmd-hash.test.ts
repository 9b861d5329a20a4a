import { describe, expect, it } from "vitest";
import { cmdHash, isCanonicalCmdHash, isWellFormedArgv, legacyCmdHash } from "../../protocol/cmd-hash.ts";

// Expected values computed outside JavaScript: printf '%s' '<json>' | sha256sum
const vectors: [string[], string][] = [
  [["a b"], "541e27fe8b978a09c9f563ba3c0e193823e476a11ba911803b7312a51f9c4411"],
  [["a", "b"], "0473ef2dc0d324ab659d3580c1134e9d812035905c4781fdd6d529b0c6860e13"],
  [["ls", "-la"], "f77a57d61be9280480eba9e49f789995d6817c07cea996b4c77cf7b956c41304"],
  [["echo", "héllo ☃"], "7f3ab36e882943561e6eb775f504e9069982e8882ffd1b3cdccf2a6179ba80aa"],
  [["say", '"hi"'], "56d92313178dc4da191f895828ca03462168d1199ab62b3c81abc436600760c0"],
  [["a\\b"], "b6c1dd4da6754687423cdd0e44201eefb4eb91997e6d44af3f09c7669f0e89d8"],
  [["x\ny"], "b2f7ecd3b8ff25c2908ad56f6ecbe78dad7a66a0ca817a80fb7dbbee9cfbfc93"],
  [["tab\there"], "ddcb11dbd0d735ca4dafe05ab084a131fd87deebad2f384538b7f28a2f857613"],
  [["nul\u0000"], "ca1b87c70c6a262cb9f8a624ccf86c30c6ebe90514f3e11ef3a15f598efb08af"],
  [["😀"], "aff2a0387611973d359e99d65ccf8953b41a00e9415a4e83ee6aab1e3c72a4ab"],
];

describe("cmdHash", () => {
  it.each(vectors)("hashes %j to the independently computed value", (argv, hex) => {
    expect(cmdHash(argv)).toBe(`SHA-256:${hex}`);
  });

  it('keeps element boundaries: ["a b"] and ["a","b"] differ', () => {
    expect(cmdHash(["a b"])).not.toBe(cmdHash(["a", "b"]));
    expect(cmdHash(["a", "b c"])).not.toBe(cmdHash(["a b", "c"]));
    expect(cmdHash(["", "a"])).not.toBe(cmdHash(["a"]));
  });

  it("has the canonical form", () => {
    for (const [argv] of vectors) expect(isCanonicalCmdHash(cmdHash(argv))).toBe(true);
    expect(isCanonicalCmdHash("541e27fe8b978a09c9f563ba3c0e193823e476a11ba911803b7312a51f9c4411")).toBe(
      false,
    );
    expect(isCanonicalCmdHash(`SHA-256:${"A".repeat(64)}`)).toBe(false);
    expect(isCanonicalCmdHash(`SHA-256:${"a".repeat(63)}`)).toBe(false);
    expect(isCanonicalCmdHash(42)).toBe(false);
  });

  it("rejects an empty argv and non-string elements", () => {
    expect(() => cmdHash([])).toThrow(TypeError);
    expect(() => cmdHash([1 as unknown as string])).toThrow(TypeError);
    expect(() => cmdHash("ls" as unknown as string[])).toThrow(TypeError);
  });
});

describe("legacyCmdHash", () => {
  it('is the ambiguous bare hex of argv.join(" "): ["a b"] and ["a","b"] collide', () => {
    // printf '%s' 'a b' | sha256sum
    const h = "c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d65";
    expect(legacyCmdHash(["a b"])).toBe(h);
    expect(legacyCmdHash(["a", "b"])).toBe(h);
  });
});

describe("isWellFormedArgv", () => {
  it("rejects lone surrogates, which cannot be encoded to UTF-8 losslessly", () => {
    expect(isWellFormedArgv(["ok", "😀"])).toBe(true);
    expect(isWellFormedArgv(["\ud800"])).toBe(false);
  });
});
