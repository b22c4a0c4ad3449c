import type { Capacity, InstanceCounts } from "./api";

const UNITS: [Intl.RelativeTimeFormatUnit, number][] = [
  ["day", 86_400],
  ["hour", 3_600],
  ["minute", 60],
  ["second", 1],
];
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

/** "3 minutes ago" (for an ISO 8601 time), as of `now` (ms since the epoch). */
export function ago(iso: string, now: number = Date.now()): string {
  const seconds = Math.round((Date.parse(iso) - now) / 1000);
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") {
      return relative.format(Math.trunc(seconds / size), unit);
    }
  }
  return iso;
}

/** The date and time in the browser's time zone, e.g. "26 Nov 2026, 10:04:05". */
export const when = (iso: string): string => absolute.format(new Date(iso));

/** The time of day of an ISO time or a ms timestamp. */
export const timeOfDay = (at: string | number): string => clock.format(new Date(at));

/** "min 2 / desired 3 / max 4". */
export const capacityText = (c: Capacity): string => `min ${c.min} / desired ${c.desired} / max ${c.max}`;

/** "2/3 Up" (or "no instances"). */
export const upText = (c: InstanceCounts): string => (c.total === 0 ? "no instances" : `${c.up}/${c.total} Up`);

/** Every non-zero count in words: "2 Up, 1 Down". */
export function countsText(c: InstanceCounts): string {
  const parts: [number, string][] = [
    [c.up, "Up"],
    [c.starting, "Starting"],
    [c.outOfService, "OutOfService"],
    [c.down, "Down"],
    [c.unknown, "Unknown"],
  ];
  const text = parts.filter(([n]) => n > 0).map(([n, what]) => `${n} ${what}`);
  return text.length > 0 ? text.join(", ") : "no instances";
}

/** "v003" of "hello-prod-v003" (the name when it has no sequence). */
export const shortName = (name: string): string => /-(v\d{3,})$/.exec(name)?.[1] ?? name;

export const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? "" : "s"}`;
