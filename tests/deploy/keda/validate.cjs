// Validates KEDA objects against the schemas @kubernetes-models/keda generated from KEDA's released CRDs.
// stdin: a JSON array of objects; stdout: a JSON array with, per object, its list of errors (empty: valid).
"use strict";
const models = {
  ScaledObject: require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject").ScaledObject,
  ScaledJob: require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledJob").ScaledJob,
  TriggerAuthentication: require("@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication").TriggerAuthentication,
};
const docs = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = docs.map((doc) => {
  const Model = models[doc.kind];
  if (!Model || doc.apiVersion !== Model.apiVersion) return [`no KEDA schema for ${doc.apiVersion} ${doc.kind}`];
  try {
    new Model(doc).validate();
    return [];
  } catch (err) {
    return (err.errors || [err]).map((e) => (e.instancePath !== undefined ? `${e.instancePath}: ${e.message}` : String(e)));
  }
});
process.stdout.write(JSON.stringify(results));
