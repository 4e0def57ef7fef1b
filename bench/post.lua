-- wrk script for bench/run.sh: POSTs a ~100-byte JSON body (set PLUGD_BENCH_PAYLOAD to change it).
wrk.method = "POST"
wrk.body = os.getenv("PLUGD_BENCH_PAYLOAD")
  or '{"user":"Ada Lovelace","id":1815,"tags":["math","engine","notes"],"active":true,"score":98.6,"lang":"en"}'
wrk.headers["Content-Type"] = "application/json"
-- With PLUGD_BENCH_TOKEN set (the auth benchmark), every request carries it as a bearer token.
local token = os.getenv("PLUGD_BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
