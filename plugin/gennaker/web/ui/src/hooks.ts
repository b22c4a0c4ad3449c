import { useCallback, useEffect, useRef, useState } from "react";

import { getJson } from "./api";

export type Loaded<T> = {
  data: T | undefined;
  error: Error | undefined;
  loading: boolean;
  /** When the data was last fetched (ms since the epoch). */
  fetchedAt: number | undefined;
  refresh: () => void;
};

type Slot<T> = { path: string; data?: T; error?: Error; fetchedAt?: number };

/**
 * GET `path` (of the Clusters API), again every `everyMs` while the browser tab is visible.
 *
 * The next request starts only when the previous one ended, so a slow answer never piles up
 * requests. `path` null: nothing is fetched. Data of another path is never returned.
 */
export function usePolled<T>(path: string | null, everyMs: number | null): Loaded<T> {
  const [slot, setSlot] = useState<Slot<T> | undefined>(undefined);
  const [tick, setTick] = useState(0);
  const timer = useRef<number | undefined>(undefined);

  useEffect(() => {
    if (path === null) {
      return undefined;
    }
    const abort = new AbortController();
    let stopped = false;

    const schedule = () => {
      if (everyMs !== null && !stopped) {
        timer.current = window.setTimeout(load, everyMs);
      }
    };
    const load = () => {
      if (document.hidden) {
        schedule(); // look again later; the visibility listener below reloads at once on return
        return;
      }
      getJson<T>(path, abort.signal).then(
        (data) => {
          if (!stopped) {
            setSlot({ path, data, fetchedAt: Date.now() });
            schedule();
          }
        },
        (error: unknown) => {
          if (!stopped && !abort.signal.aborted) {
            // Keep what was shown: a refresh that failed does not blank the page.
            setSlot((old) => ({
              ...(old?.path === path ? old : { path }),
              error: error instanceof Error ? error : new Error(String(error)),
            }));
            schedule();
          }
        },
      );
    };
    const onVisible = () => {
      if (!document.hidden && everyMs !== null) {
        window.clearTimeout(timer.current);
        load();
      }
    };
    load();
    document.addEventListener("visibilitychange", onVisible);
    return () => {
      stopped = true;
      abort.abort();
      window.clearTimeout(timer.current);
      document.removeEventListener("visibilitychange", onVisible);
    };
  }, [path, everyMs, tick]);

  const refresh = useCallback(() => setTick((t) => t + 1), []);
  const current = slot !== undefined && slot.path === path ? slot : undefined;
  return {
    data: current?.data,
    error: current?.error,
    loading: path !== null && current?.data === undefined && current?.error === undefined,
    fetchedAt: current?.fetchedAt,
    refresh,
  };
}

/** A value kept in localStorage (a user's choice that outlives the page), falling back to `initial`. */
export function useStored<T extends string | boolean>(key: string, initial: T): [T, (value: T) => void] {
  const [value, setValue] = useState<T>(() => {
    try {
      const stored = window.localStorage.getItem(key);
      if (stored !== null) {
        return (typeof initial === "boolean" ? stored === "true" : stored) as T;
      }
    } catch {
      // storage disabled: the choice lasts as long as the page
    }
    return initial;
  });
  const store = useCallback(
    (next: T) => {
      setValue(next);
      try {
        window.localStorage.setItem(key, String(next));
      } catch {
        // as above
      }
    },
    [key],
  );
  return [value, store];
}

/**
 * `value`, or the last defined one: what a closing drawer or dialog keeps showing while it animates out
 * (its content is unmounted once closed, so the next opening starts afresh).
 */
export function useLast<T>(value: T | undefined): T | undefined {
  const last = useRef(value);
  if (value !== undefined) last.current = value;
  return value ?? last.current;
}
