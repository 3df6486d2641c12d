/**
 * deploy/iam offline: the S3 policy grants every S3 call the daemon makes, on the prefixes it makes
 * them on, and nothing beyond them (s3:GetObjectAttributes included: without it the multipart
 * checksum check is off with no more than a log line); the trust policies let in exactly the
 * daemon's service account; the SSE-KMS statement in docs/deploy.md is a policy statement that names
 * its key.
 */
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const root = resolve(import.meta.dirname, "../..");
const iam = join(root, "deploy/iam");

interface Statement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Action: string | string[];
  Resource?: string | string[];
  Principal?: Record<string, string | string[]>;
  Condition?: Record<string, Record<string, string | string[]>>;
}
interface PolicyDocument {
  Version: string;
  Statement: Statement[];
}

const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : [v].flat());

async function policy(file: string): Promise<PolicyDocument> {
  const doc = JSON.parse(await readFile(join(iam, file), "utf8")) as PolicyDocument;
  expect(doc.Version, file).toBe("2012-10-17");
  return doc;
}

/** IAM's wildcard match: `*` any run of characters, `?` one. */
function matches(pattern: string, value: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(value);
}

/**
 * Whether an Allow statement grants `action` on `resource` (conditions: only s3:prefix, as a
 * ListBucket request with `prefix` would be judged). No statement here denies.
 */
function allows(doc: PolicyDocument, action: string, resource: string, prefix?: string): boolean {
  return doc.Statement.some((s) => {
    if (s.Effect !== "Allow" || !list(s.Action).includes(action)) return false;
    if (!list(s.Resource).some((r) => matches(r, resource))) return false;
    const conditions = Object.entries(s.Condition ?? {});
    return conditions.every(([operator, keys]) =>
      Object.entries(keys).every(([key, values]) => {
        if (key !== "s3:prefix" || prefix === undefined) return false;
        const test = operator === "StringLike" ? matches : (a: string, b: string) => a === b;
        return list(values).some((v) => test(v, prefix));
      }),
    );
  });
}

/** The S3 client calls a source file makes: the commands and paginators it imports from the SDK. */
async function s3Calls(file: string): Promise<string[]> {
  const text = await readFile(join(root, file), "utf8");
  const block = /import\s*\{([^}]*)\}\s*from\s*"@aws-sdk\/client-s3"/.exec(text)?.[1] ?? "";
  const named = block.split(",").map((n) => n.trim().replace(/^type\s+/, ""));
  const calls = named.flatMap((n) => {
    const command = /^(\w+)Command$/.exec(n)?.[1];
    const paginator = /^paginate(\w+)$/.exec(n)?.[1];
    return command ? [command] : paginator ? [paginator] : [];
  });
  // lib-storage's Upload: CreateMultipartUpload, UploadPart, CompleteMultipartUpload, or one PutObject.
  if (/from\s*"@aws-sdk\/lib-storage"/.test(text)) calls.push("Upload");
  return calls.sort();
}

/** The IAM action S3 checks for each call (no version id is ever sent). */
const ACTION: Record<string, string> = {
  ListObjectsV2: "s3:ListBucket",
  HeadObject: "s3:GetObject",
  GetObject: "s3:GetObject",
  GetObjectAttributes: "s3:GetObjectAttributes",
  PutObject: "s3:PutObject",
  Upload: "s3:PutObject",
  AbortMultipartUpload: "s3:AbortMultipartUpload",
  DeleteObject: "s3:DeleteObject",
  ListMultipartUploads: "s3:ListBucketMultipartUploads",
};

const BUCKET = "arn:aws:s3:::my-models-bucket";

describe("deploy/iam", () => {
  it("policy.json grants each S3 call the daemon makes, on its prefix, and nothing else", async () => {
    const doc = await policy("policy.json");
    // Models (src/s3): list, HEAD, ranged GET and GetObjectAttributes for the part sizes of a
    // multipart object (src/staging/checksum-plan.ts), under models/ (coldstart.env's sources.allow).
    const models = await s3Calls("src/s3/s3-object-source.ts");
    expect(models).toEqual(["GetObject", "GetObjectAttributes", "HeadObject", "ListObjectsV2"]);
    for (const call of models) {
      const action = ACTION[call] as string;
      const granted =
        action === "s3:ListBucket"
          ? allows(doc, action, BUCKET, "models/meta-llama/Llama-3.1-8B-Instruct/")
          : allows(doc, action, `${BUCKET}/models/meta-llama/Llama-3.1-8B-Instruct/model.safetensors`);
      expect(granted, `${call} (${action}) on models/`).toBe(true);
    }
    // Compile caches (src/compile-cache/remote.ts) under compile-cache/. DeleteObject and
    // ListMultipartUploads are `coldstart cache prune`'s, which runs with its own role
    // (docs/compile-cache.md), never the daemon's.
    const caches = await s3Calls("src/compile-cache/remote.ts");
    const pruneOnly = ["DeleteObject", "ListMultipartUploads"];
    expect(caches).toEqual(
      [
        "AbortMultipartUpload",
        "GetObject",
        "HeadObject",
        "ListObjectsV2",
        "PutObject",
        "Upload",
        ...pruneOnly,
      ].sort(),
    );
    for (const call of caches) {
      const action = ACTION[call] as string;
      const granted =
        action === "s3:ListBucket" || action === "s3:ListBucketMultipartUploads"
          ? allows(doc, action, BUCKET, "compile-cache/")
          : allows(doc, action, `${BUCKET}/compile-cache/0123abcd/pack-1.tar`);
      expect(granted, `${call} (${action}) on compile-cache/`).toBe(!pruneOnly.includes(call));
    }

    // Nothing beyond that: the actions granted, and never on the whole bucket's objects or elsewhere.
    const granted = [...new Set(doc.Statement.flatMap((s) => list(s.Action)))].sort();
    expect(granted).toEqual([
      "s3:AbortMultipartUpload",
      "s3:GetObject",
      "s3:GetObjectAttributes",
      "s3:ListBucket",
      "s3:PutObject",
    ]);
    expect(allows(doc, "s3:GetObject", `${BUCKET}/secrets/key.pem`)).toBe(false);
    expect(allows(doc, "s3:GetObjectAttributes", `${BUCKET}/compile-cache/x`)).toBe(false);
    expect(allows(doc, "s3:PutObject", `${BUCKET}/models/x.safetensors`)).toBe(false);
    expect(allows(doc, "s3:ListBucket", BUCKET, "")).toBe(false);
    expect(allows(doc, "s3:ListBucket", BUCKET, "secrets/")).toBe(false);
    for (const s of doc.Statement) {
      expect(s.Effect).toBe("Allow");
      for (const r of list(s.Resource)) expect(r.startsWith(BUCKET), r).toBe(true);
    }
  });

  it("the IRSA trust policy lets in the coldstart service account of namespace coldstart, for STS, and nothing else", async () => {
    const doc = await policy("trust-irsa.json");
    expect(doc.Statement).toHaveLength(1);
    const [s] = doc.Statement as [Statement];
    expect(s.Effect).toBe("Allow");
    expect(list(s.Action)).toEqual(["sts:AssumeRoleWithWebIdentity"]);
    // Placeholders docs/deploy.md says how to fill in.
    expect(s.Principal).toEqual({ Federated: "arn:aws:iam::ACCOUNT_ID:oidc-provider/OIDC_PROVIDER" });
    // Exact matches (no wildcard operator) on the token's subject and audience, as AWS documents.
    expect(s.Condition).toEqual({
      StringEquals: {
        "OIDC_PROVIDER:sub": "system:serviceaccount:coldstart:coldstart",
        "OIDC_PROVIDER:aud": "sts.amazonaws.com",
      },
    });
    // The subject is the ServiceAccount deploy/ creates, in the namespace the DaemonSet runs in.
    const sa = await readFile(join(root, "deploy/serviceaccount.yaml"), "utf8");
    expect(sa).toMatch(/^ {2}name: coldstart$/m);
    expect(sa).toMatch(/^ {2}namespace: coldstart$/m);
    const docs = await readFile(join(root, "docs/deploy.md"), "utf8");
    expect(docs).toContain("deploy/iam/trust-irsa.json");
    for (const placeholder of ["ACCOUNT_ID", "OIDC_PROVIDER"]) expect(docs).toContain(`s|${placeholder}|`);
  });

  it("the Pod Identity trust policy lets in the EKS Pod Identity service only", async () => {
    const doc = await policy("trust-pod-identity.json");
    expect(doc.Statement).toEqual([
      {
        Effect: "Allow",
        Principal: { Service: "pods.eks.amazonaws.com" },
        Action: ["sts:AssumeRole", "sts:TagSession"],
      },
    ]);
  });

  it("docs/deploy.md: s3:GetObjectAttributes is explained where the code calls it, and the SSE-KMS statement names its key", async () => {
    const docs = await readFile(join(root, "docs/deploy.md"), "utf8");
    const section = docs.slice(
      docs.indexOf("## S3 access"),
      docs.indexOf("\n## ", docs.indexOf("## S3 access") + 1),
    );
    expect(section).toContain("`s3:GetObjectAttributes`");
    for (const file of ["src/s3/s3-object-source.ts", "src/staging/checksum-plan.ts"]) {
      expect(section).toContain(file);
      expect(await readFile(join(root, file), "utf8")).toContain("GetObjectAttributes");
    }
    const json = /```json\n([\s\S]*?)\n```/.exec(section.slice(section.indexOf("SSE-KMS")))?.[1];
    const statement = JSON.parse(json ?? "null") as Statement;
    expect(statement).toMatchObject({ Effect: "Allow", Action: "kms:Decrypt" });
    expect(statement.Resource).toMatch(/^arn:aws:kms:[A-Z_]+:[A-Z_]+:key\/[A-Z_]+$/);
    expect(statement.Condition).toEqual({ StringEquals: { "kms:ViaService": "s3.REGION.amazonaws.com" } });
  });
});
