# frozen_string_literal: true

# bin/demo's limits: `ruby -Ilib demo/limits.rb push` enqueues, `... report` reads what ran.
require_relative "limits_app"

case ARGV[0]
when "push"
  batch = Rustq::Batch.new
  batch.description = "Monthly charges"
  batch.callback_queue = "limits"
  batch.on(:success, ChargesDone, "month" => "2026-12")
  batch.jobs { 10.times { |i| ChargeJob.perform_async(i.even? ? 1 : 2, 100 * i) } }
  puts "pushed 10 ChargeJobs for accounts 1 and 2 (limit: 2 at once per account) in batch #{batch.bid}"
  first = SyncAccountJob.perform_async(1)
  again = SyncAccountJob.perform_async(1)
  puts "SyncAccountJob.perform_async(1) twice: #{first.inspect}, then #{again.inspect} (unique_for: the lock is held)"
when "report"
  redis = Redis.new(url: ENV.fetch("REDIS_URL"))
  runs = redis.lrange("demo:charges", 0, -1).map { |json| JSON.parse(json) }
  runs.group_by { |r| r["account"] }.sort.each do |account, list|
    edges = list.flat_map { |r| [[r["start"], 1], [r["end"], -1]] }.sort
    most = edges.reduce([0, 0]) { |(now, top), (_, step)| [now + step, [top, now + step].max] }.last
    puts "account #{account}: #{list.size} charges ran, at most #{most} at once"
  end
  done = redis.get("demo:batch")
  puts "batch success callback: #{done || "not run yet"}"
  puts "unique locks left: #{Rustq::Limits.list["unique"].size} (SyncAccountJob succeeded, which gave its lock up)"
  puts "SyncAccountJob.perform_async(1) again: #{SyncAccountJob.perform_async(1).inspect}"
end
