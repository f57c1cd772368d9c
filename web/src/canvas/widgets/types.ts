import type { ControlMode, InputDef } from "../../lib/schema";

/** What every widget component gets: its node, its input, its value and the node's values. */
export type WidgetProps = {
  nodeId: string;
  input: InputDef;
  value: unknown;
  /** All the node's widget values (a Custom Combo's options, a webcam's width and height). */
  values: Readonly<Record<string, unknown>>;
  control?: ControlMode;
};
