import {
  Badge,
  Box,
  Button,
  CloseButton,
  Code,
  DataList,
  Drawer,
  HStack,
  Heading,
  Link,
  Portal,
  Spinner,
  Stack,
  Table,
  Text,
  Wrap,
} from "@chakra-ui/react";
import { useEffect, useRef, type ReactNode } from "react";
import { Link as RouterLink } from "react-router-dom";

import {
  applicationPath,
  serverGroupPath,
  type AuditResponse,
  type Cluster,
  type CreatedBy,
  type ServerGroup,
  type ServerGroupResponse,
} from "./api";
import type { Pending } from "./ActionDialog";
import { AuditTable } from "./Tables";
import { ErrorNotice } from "./ErrorNotice";
import { ago, capacityText, countsText, when } from "./format";
import { HEALTH_COLOR, HealthBar } from "./HealthBar";
import { useLast, usePolled } from "./hooks";

type Props = {
  /** The group picked in the grid (shown at once, while its details load). */
  group: ServerGroup | undefined;
  cluster: Cluster | undefined;
  /** The selection from the URL when the group is not (or not yet) in the grid. */
  missing: string | undefined;
  everyMs: number | null;
  /** Changes after an action: the details are read again at once. */
  version: number;
  onClose: () => void;
  onAction: (pending: Pending) => void;
};

const READ_ONLY = "read-only: you may read this application but not change it";

/** A server group's details and actions, in a drawer beside the grid. */
export function Details({ group: picked, cluster, missing: notFound, everyMs, version, onClose, onAction }: Props) {
  const open = picked !== undefined || notFound !== undefined;
  // While the drawer slides out, it keeps showing what it showed.
  const shown = useLast(open ? { group: picked, missing: notFound } : undefined);
  const group = shown?.group;
  const missing = shown?.missing;
  const path = open && group ? serverGroupPath(group) : null;
  const details = usePolled<ServerGroupResponse>(path, everyMs);
  const audit = usePolled<AuditResponse>(
    open && group
      ? `${applicationPath(group.application)}/audit?serverGroup=${encodeURIComponent(group.name)}&limit=10`
      : null,
    everyMs,
  );
  const kept = useLast(details.data);
  const keptAudit = useLast(audit.data);
  const data = open ? details.data : kept;
  const actions = open ? audit.data : keptAudit;
  const seen = useRef(version);
  const { refresh: refreshDetails } = details;
  const { refresh: refreshAudit } = audit;
  useEffect(() => {
    if (seen.current !== version) {
      seen.current = version;
      refreshDetails();
      refreshAudit();
    }
  }, [version, refreshDetails, refreshAudit]);
  const g = data?.serverGroup ?? group;
  const canEdit = data?.permissions.edit ?? false;
  const busy = g?.destroying ?? false;
  const why = !canEdit ? READ_ONLY : busy ? "being destroyed" : "";

  return (
    <Drawer.Root
      open={open}
      onOpenChange={(e) => {
        if (!e.open) onClose();
      }}
      size="md"
      closeOnInteractOutside={false}
      modal={false}
    >
      <Portal>
        <Drawer.Positioner pointerEvents="none">
          <Drawer.Content pointerEvents="auto" data-testid="server-group-details" aria-label="server group details">
            <Drawer.Header>
              <Stack gap={1}>
                <Drawer.Title fontFamily="mono">{g?.name ?? missing}</Drawer.Title>
                {g !== undefined ? (
                  <HStack>
                    <Badge colorPalette={g.destroying ? "red" : g.enabled ? "green" : "gray"}>
                      {g.destroying ? "destroying" : g.enabled ? "enabled" : "disabled"}
                    </Badge>
                    <Badge variant="outline">
                      {g.account}/{g.region}
                    </Badge>
                    <Text fontSize="sm" color="fg.muted">
                      {countsText(g.instanceCounts)}
                    </Text>
                  </HStack>
                ) : null}
              </Stack>
            </Drawer.Header>
            <Drawer.Body>
              {g === undefined ? (
                <Text color="fg.muted">
                  {missing} is not among this application's server groups (or the filters hide it). It may have been
                  destroyed.
                </Text>
              ) : (
                <Stack gap={5}>
                  <Wrap gap={2} data-testid="server-group-actions">
                    <ActionButton
                      label="Resize…"
                      why={why}
                      onClick={() => onAction({ kind: "resize", group: g, cluster })}
                    />
                    {g.enabled ? (
                      <ActionButton
                        label="Disable…"
                        why={why}
                        onClick={() => onAction({ kind: "disable", group: g, cluster })}
                      />
                    ) : (
                      <ActionButton
                        label="Enable…"
                        why={why}
                        onClick={() => onAction({ kind: "enable", group: g, cluster })}
                      />
                    )}
                    <ActionButton
                      label="Destroy…"
                      why={why}
                      danger
                      onClick={() => onAction({ kind: "destroy", group: g, cluster })}
                    />
                  </Wrap>
                  {data !== undefined && !canEdit ? (
                    <Text fontSize="sm" color="fg.muted" data-testid="read-only">
                      Read-only: changing {g.application}'s server groups needs edit access to one of its pipelines.
                    </Text>
                  ) : null}
                  {details.error ? <ErrorNotice error={details.error} /> : null}
                  <Facts group={g} />
                  <Stack gap={2}>
                    <Heading size="sm">Instances</Heading>
                    <HealthBar counts={g.instanceCounts} height="8px" />
                    {data === undefined ? (
                      <Spinner size="sm" />
                    ) : data.instances.length === 0 ? (
                      <Text color="fg.muted">No instances.</Text>
                    ) : (
                      <Table.Root size="sm" data-testid="instances">
                        <Table.Header>
                          <Table.Row>
                            <Table.ColumnHeader>Instance</Table.ColumnHeader>
                            <Table.ColumnHeader>Health</Table.ColumnHeader>
                            <Table.ColumnHeader textAlign="end">Restarts</Table.ColumnHeader>
                            <Table.ColumnHeader />
                          </Table.Row>
                        </Table.Header>
                        <Table.Body>
                          {data.instances.map((i) => (
                            <Table.Row key={i.id} data-instance={i.id}>
                              <Table.Cell>
                                <Text fontFamily="mono" fontSize="xs">
                                  {i.id}
                                </Text>
                                <Text fontSize="xs" color="fg.muted">
                                  {i.address}
                                  {i.zone ? ` · ${i.zone}` : ""}
                                </Text>
                              </Table.Cell>
                              <Table.Cell>
                                <HStack gap={1.5}>
                                  <Box boxSize="8px" borderRadius="full" bg={HEALTH_COLOR[i.health]} />
                                  <Text fontSize="sm">{i.health}</Text>
                                </HStack>
                                <Text fontSize="xs" color="fg.muted" title={when(i.healthSince)}>
                                  since {ago(i.healthSince)}
                                  {i.healthReason ? ` · ${i.healthReason}` : ""}
                                </Text>
                              </Table.Cell>
                              <Table.Cell textAlign="end">{i.restarts}</Table.Cell>
                              <Table.Cell textAlign="end">
                                <ActionButton
                                  label="Terminate…"
                                  why={why}
                                  danger
                                  size="2xs"
                                  onClick={() => onAction({ kind: "terminate", group: g, instance: i })}
                                />
                              </Table.Cell>
                            </Table.Row>
                          ))}
                        </Table.Body>
                      </Table.Root>
                    )}
                  </Stack>
                  {data && data.loadBalancers.length > 0 ? (
                    <Stack gap={1}>
                      <Heading size="sm">Load balancers</Heading>
                      {data.loadBalancers.map((lb) => (
                        <Text key={lb.name} fontSize="sm">
                          <Code>{lb.name}</Code>{" "}
                          {lb.listeners.map((l) => `${l.protocol}:${l.port}`).join(", ")}
                          {lb.dnsName ? ` · ${lb.dnsName}` : ""}
                        </Text>
                      ))}
                    </Stack>
                  ) : null}
                  {data && data.firewalls.length > 0 ? (
                    <Stack gap={1}>
                      <Heading size="sm">Firewalls</Heading>
                      {data.firewalls.map((fw) => (
                        <Text key={fw.name} fontSize="sm">
                          <Code>{fw.name}</Code>{" "}
                          {fw.rules
                            .map(
                              (r) =>
                                `${r.protocol} ${r.portFrom === r.portTo ? r.portFrom : `${r.portFrom}-${r.portTo}`}` +
                                ` from ${r.cidr ?? r.sourceFirewall ?? "anywhere"}`,
                            )
                            .join("; ")}
                        </Text>
                      ))}
                    </Stack>
                  ) : null}
                  <Stack gap={1}>
                    <Heading size="sm">Recent actions on this group</Heading>
                    {actions ? <AuditTable entries={actions.entries} compact /> : <Spinner size="sm" />}
                  </Stack>
                </Stack>
              )}
            </Drawer.Body>
            <Drawer.CloseTrigger asChild>
              <CloseButton size="sm" aria-label="close details" />
            </Drawer.CloseTrigger>
          </Drawer.Content>
        </Drawer.Positioner>
      </Portal>
    </Drawer.Root>
  );
}

function ActionButton(props: {
  label: string;
  why: string;
  danger?: boolean;
  size?: "2xs" | "xs" | "sm";
  onClick: () => void;
}) {
  return (
    <Button
      size={props.size ?? "sm"}
      variant="outline"
      colorPalette={props.danger ? "red" : undefined}
      disabled={props.why !== ""}
      title={props.why || undefined}
      onClick={props.onClick}
    >
      {props.label}
    </Button>
  );
}

/** A link to the pipeline run that made a server group (or a plain text when the run has no page). */
export function RunLink({ createdBy }: { createdBy: CreatedBy }) {
  const text = `${createdBy.dagId} · ${createdBy.runId} · ${createdBy.taskId}`;
  if (createdBy.runUrl === null) return <Text as="span">{text}</Text>;
  return (
    <Link asChild color="fg.info" data-testid="run-link">
      <RouterLink to={createdBy.runUrl}>{text}</RouterLink>
    </Link>
  );
}

function Facts({ group: g }: { group: ServerGroup }) {
  const rows: [string, ReactNode][] = [
    ["Cluster", <Code key="c">{g.cluster}</Code>],
    ["Capacity", capacityText(g.capacity)],
    [
      "Image",
      <span key="i">
        <Code>{g.image.id}</Code>
        {g.image.package ? ` ${g.image.package}` : ""}
        {g.image.version ? ` ${g.image.version}` : ""}
      </span>,
    ],
    ["Created", <span key="t" title={when(g.createdAt)}>{ago(g.createdAt)}</span>],
    ["Created by", g.createdBy ? <RunLink createdBy={g.createdBy} /> : "not by a pipeline"],
  ];
  if (!g.enabled && g.disabledAt) {
    rows.push(["Disabled", `${ago(g.disabledAt)}${g.disabledBy ? ` by ${g.disabledBy}` : ""}`]);
  }
  if (g.loadBalancers.length > 0) rows.push(["Load balancers", g.loadBalancers.join(", ")]);
  if (g.firewalls.length > 0) rows.push(["Firewalls", g.firewalls.join(", ")]);
  return (
    <DataList.Root orientation="horizontal" size="sm" data-testid="server-group-facts">
      {rows.map(([label, value]) => (
        <DataList.Item key={label}>
          <DataList.ItemLabel>{label}</DataList.ItemLabel>
          <DataList.ItemValue>{value}</DataList.ItemValue>
        </DataList.Item>
      ))}
    </DataList.Root>
  );
}
