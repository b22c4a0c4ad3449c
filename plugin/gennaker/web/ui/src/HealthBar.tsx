import type { Health, InstanceCounts } from "./api";
import { countsText } from "./format";

/** The colour of each health, as Chakra tokens of the host's theme (they follow light and dark mode). */
export const HEALTH_COLOR: Record<Health, string> = {
  Up: "green.solid",
  Starting: "blue.solid",
  OutOfService: "gray.solid",
  Down: "red.solid",
  Unknown: "gray.muted",
};

const ORDER: [keyof InstanceCounts, string][] = [
  ["up", "gk-up"],
  ["starting", "gk-starting"],
  ["outOfService", "gk-oos"],
  ["down", "gk-down"],
  ["unknown", "gk-unknown"],
];

/**
 * One bar for a group of instances: a segment per health, as wide as its share.
 *
 * Plain elements styled by the page's stylesheet (styles.ts), not Chakra components: the grid
 * draws one per server group, a thousand at a time.
 */
export function HealthBar({ counts, height }: { counts: InstanceCounts; height?: string }) {
  const label = countsText(counts);
  return (
    <span className="gk-bar" role="img" aria-label={`instances: ${label}`} title={label} style={{ height }}>
      {ORDER.map(([key, className]) =>
        counts[key] > 0 ? <span key={key} className={className} style={{ flexGrow: counts[key] }} /> : null,
      )}
    </span>
  );
}
