/**
 * The lab's traffic shaping as tc batch lines, kept pure so it can be read and tested apart from the
 * root-only commands that apply it.
 *
 * S3 serves each connection far below an instance's bandwidth, so a shaped network needs a cap per
 * connection under a cap for the link. This kernel has HTB and the u32 classifier but not fq (no
 * per-flow maxrate), netem or the flow/fw classifiers, so: the client's ephemeral ports are pinned to
 * one aligned window of PORT_WINDOW ports, and a u32 hash table on the low byte of the destination
 * port sends each client port's packets (server to client: the download direction) to its own HTB
 * class, capped at the per-connection rate, under one class capped at the link rate. Exact per
 * connection, no hashing collisions, O(1) lookup.
 */

/** Client ports: an aligned window, one HTB class each. */
export const PORT_BASE = 40960;
export const PORT_WINDOW = 1024;

export interface ShapingOptions {
  /** The server side's veth (its egress carries the downloads). */
  dev: string;
  perConnectionMbit: number;
  linkMbit: number;
}

const LINK_CLASS = 1;
const DEFAULT_CLASS = 2;
/** What the default class (traffic from no client port) is assured. */
const DEFAULT_RATE_KBIT = 1000;
/** Per-connection classes are 1:(CLASS_BASE + port - PORT_BASE), in hex as tc reads minor ids. */
const CLASS_BASE = 0x1000;

const hex = (n: number) => n.toString(16);

/** The HTB class id (1:xxxx) a client port is shaped by. */
export function classFor(port: number): string {
  if (!Number.isInteger(port) || port < PORT_BASE || port >= PORT_BASE + PORT_WINDOW) {
    throw new RangeError(
      `port ${port} is outside the lab's client window ${PORT_BASE}-${PORT_BASE + PORT_WINDOW - 1}`,
    );
  }
  return `1:${hex(CLASS_BASE + port - PORT_BASE)}`;
}

/** `tc -batch` lines: HTB root, link class, one class per client port, the u32 hash filter. */
export function shapingBatch(o: ShapingOptions): string[] {
  if (!(o.perConnectionMbit > 0 && o.linkMbit >= o.perConnectionMbit)) {
    throw new RangeError(`need 0 < per-connection (${o.perConnectionMbit}) <= link (${o.linkMbit}) Mbit/s`);
  }
  const { dev } = o;
  const link = `${o.linkMbit}mbit`;
  const conn = `${o.perConnectionMbit}mbit`;
  const lines = [
    // r2q sizes each class's quantum; at these rates the default warns and mis-sizes it.
    `qdisc add dev ${dev} root handle 1: htb default ${hex(DEFAULT_CLASS)} r2q 100`,
    `class add dev ${dev} parent 1: classid 1:${hex(LINK_CLASS)} htb rate ${link} ceil ${link}`,
    // Anything not from a client port (ARP, handshakes' SYN-ACKs before the port is known: all fine).
    `class add dev ${dev} parent 1:${hex(LINK_CLASS)} classid 1:${hex(DEFAULT_CLASS)} htb rate ${DEFAULT_RATE_KBIT}kbit ceil ${link}`,
  ];
  // HTB always grants a class its own rate, whatever its parent's: with rate = the per-connection cap,
  // 25 connections would get 25 caps past the link. So each class is assured only its share of the
  // link (link / window) and borrows up to its ceil, the per-connection cap, from the link class,
  // which cannot lend more than the link.
  const share = `${Math.max(8, Math.floor((o.linkMbit * 1000 - DEFAULT_RATE_KBIT) / PORT_WINDOW))}kbit`;
  for (let i = 0; i < PORT_WINDOW; i++) {
    lines.push(
      `class add dev ${dev} parent 1:${hex(LINK_CLASS)} classid ${classFor(PORT_BASE + i)} htb rate ${share} ceil ${conn} quantum 1514`,
    );
  }
  // A 256-bucket hash table keyed on the destination port's low byte (TCP header at offset 20 of an
  // option-less IPv4 header: dport is bytes 22-23, so the low byte is the word at 20 masked 0xff).
  lines.push(`filter add dev ${dev} parent 1: prio 5 handle 2: protocol ip u32 divisor 256`);
  lines.push(
    `filter add dev ${dev} parent 1: prio 5 protocol ip u32 ht 800:: match ip protocol 6 0xff match ip dst 0.0.0.0/0 hashkey mask 0x000000ff at 20 link 2:`,
  );
  for (let i = 0; i < PORT_WINDOW; i++) {
    const port = PORT_BASE + i;
    lines.push(
      `filter add dev ${dev} parent 1: prio 5 protocol ip u32 ht 2:${hex(port & 0xff)}: match ip dport ${port} 0xffff flowid ${classFor(port)}`,
    );
  }
  return lines;
}
