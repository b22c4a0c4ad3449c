import { Badge, Box, Button, Flex, HStack, Heading, Text } from "@chakra-ui/react";
import { memo, useEffect, useRef, useState } from "react";

import type { Cluster, ServerGroup } from "./api";
import { plural, shortName, upText } from "./format";
import { HealthBar } from "./HealthBar";

/** How many clusters are rendered at first (more than a screen holds), and added each time the end of the list
 * comes near the view: a thousand server groups at once would keep the first screen waiting. */
export const FIRST = 10;
export const CHUNK = 20;

export const groupKey = (g: Pick<ServerGroup, "account" | "region" | "name">): string =>
  `${g.account}/${g.region}/${g.name}`;

type GridProps = {
  clusters: Cluster[];
  selected: string | undefined;
  /** The cluster of the selected group, rendered even if it is far down the list. */
  selectedCluster: number;
  canEdit: boolean;
  onSelect: (group: ServerGroup) => void;
  onHistory: (cluster: Cluster) => void;
  onRollback: (cluster: Cluster) => void;
};

/** Every cluster with its server groups side by side, newest first. Long lists are rendered as they scroll in. */
export function ClusterGrid(props: GridProps) {
  const { clusters, selectedCluster } = props;
  const [limit, setLimit] = useState(FIRST);
  const shown = Math.max(limit, selectedCluster + 1);
  const end = useRef<HTMLDivElement>(null);
  useEffect(() => {
    performance.mark("gennaker:grid-rendered");
  }, [clusters]);

  useEffect(() => {
    const sentinel = end.current;
    if (sentinel === null || shown >= clusters.length) {
      return undefined;
    }
    const observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) {
          setLimit((l) => Math.max(l, shown) + CHUNK);
        }
      },
      { rootMargin: "800px" },
    );
    observer.observe(sentinel);
    return () => observer.disconnect();
  }, [shown, clusters.length]);

  return (
    <Flex direction="column" gap={3} data-testid="clusters-grid" aria-label="clusters">
      {clusters.slice(0, shown).map((cluster) => (
        <ClusterRow
          key={`${cluster.account}/${cluster.name}`}
          cluster={cluster}
          selected={cluster.serverGroups.some((g) => groupKey(g) === props.selected) ? props.selected : undefined}
          canEdit={props.canEdit}
          onSelect={props.onSelect}
          onHistory={props.onHistory}
          onRollback={props.onRollback}
        />
      ))}
      {shown < clusters.length ? (
        <Box ref={end} py={4} textAlign="center" color="fg.muted" fontSize="sm">
          Showing {shown} of {clusters.length} clusters; more appear as you scroll.
        </Box>
      ) : null}
    </Flex>
  );
}

type RowProps = Omit<GridProps, "clusters" | "selectedCluster"> & { cluster: Cluster };

/** The server groups that a rollback can go back to: not being destroyed, older than the newest live one. */
export const liveGroups = (cluster: Cluster): ServerGroup[] => cluster.serverGroups.filter((g) => !g.destroying);

const ClusterRow = memo(function ClusterRow({ cluster, selected, canEdit, onSelect, onHistory, onRollback }: RowProps) {
  const live = liveGroups(cluster);
  const canRollback = canEdit && live.length >= 2;
  return (
    <Box
      as="section"
      borderWidth="1px"
      borderRadius="md"
      bg="bg.panel"
      p={3}
      data-testid="cluster"
      data-cluster={cluster.name}
      data-account={cluster.account}
      aria-label={`cluster ${cluster.name} in ${cluster.account}`}
    >
      <HStack gap={3} wrap="wrap">
        <Heading as="h3" size="sm" fontFamily="mono">
          {cluster.name}
        </Heading>
        <Badge variant="outline">{cluster.account}</Badge>
        {cluster.regions.map((region) => (
          <Badge key={region} variant="subtle">
            {region}
          </Badge>
        ))}
        <Text fontSize="sm" color="fg.muted">
          {upText(cluster.instanceCounts)} · {plural(cluster.serverGroups.length, "server group")}
        </Text>
        <Button size="xs" variant="outline" onClick={() => onHistory(cluster)}>
          History
        </Button>
        <Button
          size="xs"
          variant="outline"
          disabled={!canRollback}
          title={
            !canEdit ? "read-only: you may not change this application" : live.length < 2 ? "no older server group" : ""
          }
          onClick={() => onRollback(cluster)}
        >
          Rollback…
        </Button>
      </HStack>
      <Flex gap={2} wrap="wrap" mt={2}>
        {cluster.serverGroups.map((group) => (
          <GroupCard key={group.name} group={group} selected={selected === groupKey(group)} onSelect={onSelect} />
        ))}
      </Flex>
    </Box>
  );
});

type CardProps = { group: ServerGroup; selected: boolean; onSelect: (group: ServerGroup) => void };

const GroupCard = memo(function GroupCard({ group, selected, onSelect }: CardProps) {
  const state = group.destroying ? "destroying" : group.enabled ? "enabled" : "disabled";
  const image = group.image.version ?? group.image.name ?? group.image.id;
  return (
    <button
      type="button"
      className="gk-card"
      onClick={() => onSelect(group)}
      aria-pressed={selected}
      aria-label={`server group ${group.name}, ${state}`}
      data-testid="server-group"
      data-name={group.name}
      data-state={state}
    >
      <span className="gk-row">
        <span className="gk-name">{shortName(group.name)}</span>
        <span className="gk-badge" data-state={state}>
          {state}
        </span>
      </span>
      <span className="gk-small" title={image}>
        {image}
      </span>
      <HealthBar counts={group.instanceCounts} />
      <span className="gk-row gk-small">
        <span>{upText(group.instanceCounts)}</span>
        <span>desired {group.capacity.desired}</span>
      </span>
    </button>
  );
});
