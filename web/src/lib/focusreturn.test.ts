import { describe, expect, it } from "vitest";
import { returnFocus } from "./focusreturn";

function fakeDoc() {
  const body = { name: "body" };
  const doc = { body, activeElement: body as unknown };
  const button = (name: string) => {
    const el = { name, isConnected: true, focus: () => { doc.activeElement = el; } };
    return el;
  };
  return { doc, body, button };
}

describe("returnFocus (a dialog or menu closed)", () => {
  it("puts the focus back on the button that opened it when the focus fell to <body>", () => {
    const { doc, button } = fakeDoc();
    const examples = button("Examples");
    expect(returnFocus(examples, doc)).toBe(true);
    expect(doc.activeElement).toBe(examples);
  });

  it("also when the focus is still inside the closed dialog", () => {
    const { doc, button } = fakeDoc();
    const opener = button("help");
    const search = button("search");
    doc.activeElement = search;
    expect(returnFocus(opener, doc, { contains: (n) => n === search })).toBe(true);
    expect(doc.activeElement).toBe(opener);
  });

  it("leaves a focus the user put elsewhere, and an opener no longer in the page", () => {
    const { doc, button } = fakeDoc();
    const opener = button("Examples");
    const canvas = button("canvas");
    doc.activeElement = canvas;
    expect(returnFocus(opener, doc)).toBe(false);
    expect(doc.activeElement).toBe(canvas);
    const gone = { ...button("gone"), isConnected: false };
    doc.activeElement = doc.body;
    expect(returnFocus(gone, doc)).toBe(false);
    expect(returnFocus(null, doc)).toBe(false);
  });
});
