import {
  Alert,
  Badge,
  Button,
  Checkbox,
  CloseButton,
  Dialog,
  Field,
  HStack,
  Input,
  List,
  NativeSelect,
  Portal,
  Spinner,
  Stack,
  Text,
} from "@chakra-ui/react";
import { useEffect, useState } from "react";

import {
  ApiError,
  applicationPath,
  clusterPath,
  getJson,
  postJson,
  serverGroupPath,
  type ActionResponse,
  type AuditEntry,
  type AuditResponse,
  type Capacity,
  type Cluster,
  type Instance,
  type ServerGroup,
} from "./api";
import { liveGroups } from "./ClusterGrid";
import { capacityText, plural } from "./format";
import { useLast } from "./hooks";

/** An action the user asked for, waiting for confirmation. */
export type Pending =
  | { kind: "resize" | "enable" | "disable" | "destroy"; group: ServerGroup; cluster: Cluster | undefined }
  | { kind: "terminate"; group: ServerGroup; instance: Instance }
  | { kind: "rollback"; cluster: Cluster };

const TITLES: Record<Pending["kind"], string> = {
  resize: "Resize",
  enable: "Enable",
  disable: "Disable",
  destroy: "Destroy",
  terminate: "Terminate instance",
  rollback: "Roll back",
};
const DANGEROUS = new Set<Pending["kind"]>(["disable", "destroy", "terminate"]);
const POLL_MS = 1000;
const FINAL = new Set(["SUCCEEDED", "FAILED", "REFUSED", "FORBIDDEN", "INTERRUPTED"]);

type Props = { pending: Pending | undefined; onClose: () => void; onChanged: () => void };

/** The confirmation of an action: it says exactly what will change, sends it, and follows it to its end. */
export function ActionDialog({ pending, onClose, onChanged }: Props) {
  const shown = useLast(pending);
  return (
    <Dialog.Root
      open={pending !== undefined}
      onOpenChange={(e) => {
        if (!e.open) onClose();
      }}
      role={pending !== undefined && DANGEROUS.has(pending.kind) ? "alertdialog" : "dialog"}
      size="md"
      lazyMount
      unmountOnExit
    >
      <Portal>
        <Dialog.Backdrop />
        <Dialog.Positioner>
          <Dialog.Content data-testid="action-dialog">
            {shown !== undefined ? <ActionForm pending={shown} onChanged={onChanged} /> : null}
            <Dialog.CloseTrigger asChild>
              <CloseButton size="sm" aria-label="close the dialog" />
            </Dialog.CloseTrigger>
          </Dialog.Content>
        </Dialog.Positioner>
      </Portal>
    </Dialog.Root>
  );
}

type Sent = { entry: AuditEntry; error?: undefined } | { entry?: undefined; error: ApiError | Error };

function ActionForm({ pending, onChanged }: { pending: Pending; onChanged: () => void }) {
  const [reason, setReason] = useState("");
  const [capacity, setCapacity] = useState<Capacity | undefined>(
    pending.kind === "resize" ? pending.group.capacity : undefined,
  );
  const [decrement, setDecrement] = useState(false);
  const [target, setTarget] = useState<string>("previous");
  const [region, setRegion] = useState<string>(pending.kind === "rollback" ? pending.cluster.regions[0] ?? "" : "");
  const [sending, setSending] = useState(false);
  const [sent, setSent] = useState<Sent | undefined>(undefined);

  const plan = describe(pending, { capacity, decrement, target, region });
  const subject = pending.kind === "rollback" ? pending.cluster.name : pending.group.name;
  const running = sent?.entry !== undefined && !FINAL.has(sent.entry.status);

  // Follow the action to its end through the audit trail (its entry is updated when it ends).
  const application = pending.kind === "rollback" ? pending.cluster.application : pending.group.application;
  const cluster = pending.kind === "rollback" ? pending.cluster.name : pending.group.cluster;
  const actionId = sent?.entry?.id;
  useEffect(() => {
    if (!running || actionId === undefined) return undefined;
    const timer = window.setTimeout(() => {
      getJson<AuditResponse>(`${applicationPath(application)}/audit?cluster=${encodeURIComponent(cluster)}&limit=50`)
        .then((audit) => {
          const entry = audit.entries.find((e) => e.id === actionId);
          if (entry !== undefined) {
            setSent({ entry });
            if (FINAL.has(entry.status)) onChanged();
          }
        })
        .catch(() => setSent((old) => (old?.entry !== undefined ? { entry: { ...old.entry } } : old)));
    }, POLL_MS);
    return () => window.clearTimeout(timer);
  }, [running, actionId, sent, application, cluster, onChanged]);

  const send = () => {
    if (plan.body === undefined) return;
    setSending(true);
    postJson<ActionResponse>(plan.path, { ...plan.body, ...(reason.trim() ? { reason: reason.trim() } : {}) })
      .then(
        (response) => setSent({ entry: response.action }),
        (error: unknown) => setSent({ error: error instanceof Error ? error : new Error(String(error)) }),
      )
      .finally(() => {
        setSending(false);
        onChanged();
      });
  };

  const done = sent?.entry !== undefined;
  return (
    <>
      <Dialog.Header>
        <Dialog.Title>
          {TITLES[pending.kind]} {pending.kind === "terminate" ? pending.instance.id : subject}
        </Dialog.Title>
      </Dialog.Header>
      <Dialog.Body>
        <Stack gap={4}>
          {pending.kind === "resize" && capacity !== undefined ? (
            <CapacityFields capacity={capacity} onChange={setCapacity} disabled={done} />
          ) : null}
          {pending.kind === "terminate" ? (
            <Checkbox.Root
              checked={decrement}
              onCheckedChange={(e) => setDecrement(e.checked === true)}
              disabled={done}
            >
              <Checkbox.HiddenInput />
              <Checkbox.Control />
              <Checkbox.Label>Shrink the server group by one instead of replacing the instance</Checkbox.Label>
            </Checkbox.Root>
          ) : null}
          {pending.kind === "rollback" ? (
            <RollbackFields
              cluster={pending.cluster}
              region={region}
              target={target}
              onRegion={setRegion}
              onTarget={setTarget}
              disabled={done}
            />
          ) : null}
          <Stack gap={1} data-testid="action-summary">
            <Text fontWeight="semibold">What will change</Text>
            <List.Root ps={5}>
              {plan.changes.map((change) => (
                <List.Item key={change}>{change}</List.Item>
              ))}
            </List.Root>
          </Stack>
          {plan.problem !== undefined ? (
            <Alert.Root status="warning">
              <Alert.Indicator />
              <Alert.Title>{plan.problem}</Alert.Title>
            </Alert.Root>
          ) : null}
          {!done ? (
            <Field.Root>
              <Field.Label>Reason (kept in the audit trail)</Field.Label>
              <Input value={reason} onChange={(e) => setReason(e.target.value)} placeholder="optional" />
            </Field.Root>
          ) : null}
          {sent !== undefined ? <Outcome sent={sent} /> : null}
        </Stack>
      </Dialog.Body>
      <Dialog.Footer>
        <Dialog.ActionTrigger asChild>
          <Button variant="outline">{done ? "Close" : "Cancel"}</Button>
        </Dialog.ActionTrigger>
        {!done ? (
          <Button
            colorPalette={DANGEROUS.has(pending.kind) ? "red" : "blue"}
            onClick={send}
            loading={sending}
            disabled={plan.body === undefined}
            data-testid="confirm-action"
          >
            {TITLES[pending.kind]} {pending.kind === "terminate" ? pending.instance.id : subject}
          </Button>
        ) : null}
      </Dialog.Footer>
    </>
  );
}

function Outcome({ sent }: { sent: Sent }) {
  if (sent.error !== undefined) {
    const error = sent.error;
    return (
      <Alert.Root status="error" data-testid="action-outcome" data-status="ERROR">
        <Alert.Indicator />
        <Alert.Content>
          <Alert.Title>{error instanceof ApiError ? `Refused (${error.status})` : "Not sent"}</Alert.Title>
          <Alert.Description>
            {error.message}
            {error instanceof ApiError && error.hint ? ` (${error.hint})` : ""}
          </Alert.Description>
        </Alert.Content>
      </Alert.Root>
    );
  }
  const { entry } = sent;
  const status = entry.status === "SUCCEEDED" ? "success" : entry.status === "RUNNING" ? "info" : "error";
  return (
    <Alert.Root status={status} data-testid="action-outcome" data-status={entry.status}>
      {entry.status === "RUNNING" ? <Spinner size="sm" /> : <Alert.Indicator />}
      <Alert.Content>
        <Alert.Title>
          <HStack>
            <span>{entry.status === "RUNNING" ? "Running" : "Finished"}</span>
            <Badge>{entry.status}</Badge>
          </HStack>
        </Alert.Title>
        <Alert.Description>
          {entry.message ||
            (entry.status === "RUNNING" ? "You may close this dialog: the action goes on." : "Done.")}
        </Alert.Description>
      </Alert.Content>
    </Alert.Root>
  );
}

function CapacityFields(props: { capacity: Capacity; onChange: (c: Capacity) => void; disabled: boolean }) {
  const { capacity, onChange, disabled } = props;
  const field = (key: keyof Capacity, label: string) => (
    <Field.Root key={key}>
      <Field.Label>{label}</Field.Label>
      <Input
        type="number"
        min={0}
        step={1}
        value={Number.isNaN(capacity[key]) ? "" : capacity[key]}
        disabled={disabled}
        name={key}
        aria-label={label}
        onChange={(e) => onChange({ ...capacity, [key]: e.target.value === "" ? Number.NaN : Number(e.target.value) })}
      />
    </Field.Root>
  );
  return <HStack align="start">{[field("min", "Min"), field("desired", "Desired"), field("max", "Max")]}</HStack>;
}

function RollbackFields(props: {
  cluster: Cluster;
  region: string;
  target: string;
  onRegion: (r: string) => void;
  onTarget: (t: string) => void;
  disabled: boolean;
}) {
  const { cluster, region, target, onRegion, onTarget, disabled } = props;
  const older = liveGroups(cluster)
    .filter((g) => g.region === region)
    .slice(1);
  return (
    <HStack align="end">
      {cluster.regions.length > 1 ? (
        <Field.Root>
          <Field.Label>Region</Field.Label>
          <NativeSelect.Root disabled={disabled}>
            <NativeSelect.Field value={region} onChange={(e) => onRegion(e.target.value)}>
              {cluster.regions.map((r) => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </NativeSelect.Field>
            <NativeSelect.Indicator />
          </NativeSelect.Root>
        </Field.Root>
      ) : null}
      <Field.Root>
        <Field.Label>Roll back to</Field.Label>
        <NativeSelect.Root disabled={disabled}>
          <NativeSelect.Field value={target} onChange={(e) => onTarget(e.target.value)} aria-label="Roll back to">
            <option value="previous">the previous server group{older[0] ? ` (${older[0].name})` : ""}</option>
            {older.map((g) => (
              <option key={g.name} value={g.name}>
                {g.name}
                {g.image.version ? ` (${g.image.version})` : ""}
              </option>
            ))}
          </NativeSelect.Field>
          <NativeSelect.Indicator />
        </NativeSelect.Root>
      </Field.Root>
    </HStack>
  );
}

// --------------------------------------------------------------------------- what an action changes

type Choices = { capacity: Capacity | undefined; decrement: boolean; target: string; region: string };
type Plan = { path: string; body: object | undefined; changes: string[]; problem?: string };

const where = (g: ServerGroup) => `${g.account}/${g.region}`;
const verb = (g: ServerGroup, one: string, many: string) => (g.loadBalancers.length === 1 ? one : many);
const lbText = (g: ServerGroup) =>
  g.loadBalancers.length > 0 ? `load balancer${g.loadBalancers.length > 1 ? "s" : ""} ${g.loadBalancers.join(", ")}` : "";

/** The request of an action and, in plain words, everything it will change. */
export function describe(pending: Pending, choices: Choices): Plan {
  if (pending.kind === "rollback") return describeRollback(pending.cluster, choices);
  const g = pending.group;
  const path = serverGroupPath(g);
  const instances = plural(g.instanceCounts.total, "instance");
  switch (pending.kind) {
    case "resize": {
      const c = choices.capacity ?? g.capacity;
      const valid = [c.min, c.desired, c.max].every((n) => Number.isInteger(n) && n >= 0);
      if (!valid || !(c.min <= c.desired && c.desired <= c.max)) {
        return { path, body: undefined, changes: [], problem: "Capacity needs whole numbers with min ≤ desired ≤ max." };
      }
      const delta = c.desired - g.capacity.desired;
      const changes = [`${g.name} (${where(g)}): capacity ${capacityText(g.capacity)} → ${capacityText(c)}.`];
      changes.push(
        delta > 0
          ? `${plural(delta, "instance")} will be started (${g.capacity.desired} → ${c.desired}).`
          : delta < 0
            ? `${plural(-delta, "instance")} will be terminated (${g.capacity.desired} → ${c.desired}).`
            : `No instance is started or terminated (desired stays ${c.desired}).`,
      );
      if (c.min === g.capacity.min && c.desired === g.capacity.desired && c.max === g.capacity.max) {
        return { path, body: undefined, changes: ["Nothing yet: set a new min, desired or max."] };
      }
      return { path: `${path}/resize`, body: { capacity: c }, changes };
    }
    case "enable": {
      const others = (pending.cluster?.enabledServerGroups ?? []).filter((n) => n !== g.name);
      return {
        path: `${path}/enable`,
        body: {},
        changes: [
          `${g.name} (${where(g)}) is put in service${lbText(g) ? `: ${lbText(g)} ${verb(g, "sends", "send")} it traffic` : ""}.`,
          others.length > 0
            ? `${others.join(", ")} stay${others.length === 1 ? "s" : ""} enabled: traffic is shared.`
            : "It becomes the only enabled server group of its cluster.",
        ],
        problem: g.enabled ? `${g.name} is already enabled.` : undefined,
      };
    }
    case "disable": {
      const others = (pending.cluster?.enabledServerGroups ?? []).filter((n) => n !== g.name);
      return {
        path: `${path}/disable`,
        body: {},
        changes: [
          `${g.name} (${where(g)}) is taken out of service` +
            (lbText(g) ? `: ${lbText(g)} ${verb(g, "stops", "stop")} sending it traffic.` : "."),
          `Its ${instances} keep running (a later enable is quick).`,
          others.length > 0 ? `${others.join(", ")} keep${others.length === 1 ? "s" : ""} serving.` : "",
        ].filter(Boolean),
        problem: !g.enabled
          ? `${g.name} is already disabled.`
          : others.length === 0
            ? `It is the only enabled server group of ${g.cluster}: nothing will take its traffic (a traffic guard may refuse).`
            : undefined,
      };
    }
    case "destroy":
      return {
        path: `${path}/destroy`,
        body: {},
        changes: [
          `${g.name} (${where(g)}) is disabled${lbText(g) ? ` in ${lbText(g)}` : ""}, then deleted with its ${instances}.`,
          "This cannot be undone: a rollback to it is no longer possible.",
        ],
        problem: g.enabled && (pending.cluster?.enabledServerGroups.length ?? 1) <= 1
          ? `It is the only enabled server group of ${g.cluster}: nothing will take its traffic (a traffic guard may refuse).`
          : undefined,
      };
    case "terminate": {
      const i = pending.instance;
      const changes = [`Instance ${i.id} (${i.address}) of ${g.name} (${where(g)}) is terminated.`];
      changes.push(
        choices.decrement
          ? `${g.name} shrinks: desired ${g.capacity.desired} → ${g.capacity.desired - 1}` +
              (g.capacity.min > g.capacity.desired - 1 ? `, min ${g.capacity.min} → ${g.capacity.desired - 1}.` : ".")
          : `${g.name} starts a new instance in its place (desired stays ${g.capacity.desired}).`,
      );
      return {
        path: `${path}/instances/${encodeURIComponent(i.id)}/terminate`,
        body: { decrement: choices.decrement },
        changes,
      };
    }
  }
}

function describeRollback(cluster: Cluster, { target, region }: Choices): Plan {
  const live = liveGroups(cluster).filter((g) => g.region === region); // newest first
  const path = `${clusterPath(cluster.application, cluster.account, cluster.name)}/rollback`;
  if (live.length < 2) {
    return { path, body: undefined, changes: [], problem: `${cluster.name} has no older server group to roll back to.` };
  }
  const newest = live[0];
  const restore = target === "previous" ? live[1] : live.find((g) => g.name === target);
  if (restore === undefined || restore.name === newest.name) {
    return { path, body: undefined, changes: [], problem: "Pick an older server group." };
  }
  const index = live.indexOf(restore);
  const newer = live.slice(0, index).filter((g) => g.enabled).map((g) => g.name);
  const grows = restore.capacity.desired < newest.capacity.desired;
  const changes = [
    grows
      ? `${restore.name} grows from ${capacityText(restore.capacity)} to ${capacityText(newest.capacity)} (the size of ${newest.name}).`
      : `${restore.name} keeps its capacity (${capacityText(restore.capacity)}).`,
    `${restore.name} is enabled${restore.enabled ? " (it already is)" : ""}${lbText(restore) ? ` in ${lbText(restore)}` : ""}.`,
    newer.length > 0
      ? `Once all of its instances are Up (within 10 minutes), ${newer.join(", ")} ${newer.length === 1 ? "is" : "are"} disabled.`
      : "No newer server group is enabled: nothing is disabled.",
    "If it does not get healthy in time, nothing is disabled and the newer groups keep serving.",
  ];
  return {
    path,
    body: { region, target: target === "previous" ? "previous" : restore.name },
    changes,
  };
}
