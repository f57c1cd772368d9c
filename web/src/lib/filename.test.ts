import { describe, expect, it } from "vitest";
import { fileSafeName } from "./filename";

describe("fileSafeName", () => {
  it("is what a browser saves the file as, on every system", () => {
    expect(fileSafeName('a:b*c?"<>|')).toBe("a-b-c-");
    expect(fileSafeName("..")).toBe("");
    expect(fileSafeName(".")).toBe("");
    expect(fileSafeName(" my hearts / v2 ")).toBe("my hearts - v2");
    expect(fileSafeName("tab\there")).toBe("tab-here");
    expect(fileSafeName("a\u202egnp.exe")).toBe("a-gnp.exe");
    expect(fileSafeName("héllo ❤️")).toBe("héllo ❤️");
  });
});
