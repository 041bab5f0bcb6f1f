-- Example organizations, for `make run` (python -m orchestrator.seed --repo app config/app/seeds.sql, after
-- the global migrations): every active organization is a tenant, schema org_<slug>; org_acme is the canary.
-- Add a tenant the same way: INSERT INTO public.organizations (slug, name) VALUES ('hooli', 'Hooli');
-- the daemon migrates it within one interval.
INSERT INTO public.organizations (slug, name) VALUES
  ('acme', 'Acme Corporation'),
  ('globex', 'Globex Corporation'),
  ('initech', 'Initech')
ON CONFLICT (slug) DO NOTHING;
